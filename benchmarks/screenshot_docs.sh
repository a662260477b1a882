#!/usr/bin/env bash
# Build the documentation site and screenshot two pages in headless Chromium (Debian's
# `chromium` package): results/docs_site_home.png, results/docs_site_api.png.
set -euo pipefail
cd "$(dirname "$0")/.."
make docs
(cd build/site && python3 -m http.server 8765 >/dev/null 2>&1) & server=$!
trap 'kill $server' EXIT
sleep 1
for pair in "index:" "api:api/stableeig.html"; do
  name=${pair%%:*}; page=${pair#*:}
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1280,900 \
    --screenshot="results/docs_site_${name/index/home}.png" "http://127.0.0.1:8765/${page}"
done
