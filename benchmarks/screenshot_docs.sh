#!/usr/bin/env bash
# Build the documentation site and screenshot its pages in headless Chromium (Debian's
# `chromium` package) at a desktop width (1280 px) and a phone width (390 px):
# results/docs_screenshots/<page>-<width>.png. Look at them: every plot must be legible.
set -euo pipefail
cd "$(dirname "$0")/.."
make docs
out=results/docs_screenshots
mkdir -p "$out"
(cd build/site && python3 -m http.server 8765 >/dev/null 2>&1) & server=$!
trap 'kill $server' EXIT
sleep 1
shoot() {  # name page width height
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$(mktemp -d)" --window-size="$3,$4" \
    --screenshot="$out/$1-$3.png" "http://127.0.0.1:8765/$2" 2>/dev/null
}
for pair in "home:" "survival:reproduction/#survival-of-the-long-runs" "api-layers:reference/layers/" \
            "gallery-fid:gallery/fid/" "benchmarks:benchmarks/"; do
  name=${pair%%:*}; page=${pair#*:}
  shoot "$name" "$page" 1280 1000
  shoot "$name" "$page" 390 1400
done
ls -la "$out"
