"""Screenshot the documentation site at a desktop and a phone width, to look at.

    make docs && python benchmarks/screenshot_docs.py      # needs playwright (pip) and
                                                           # Debian's chromium

Serves ``build/site`` on a free local port and, in headless Chromium (driven by
playwright, ``/usr/bin/chromium``), saves for each page the viewport scrolled to the
element named (a plot, a heading) at 1280 px and at 390 px:
``results/docs_screenshots/<name>-<width>.png``, and prints each plot's rendered size (a
plot must be legible at both widths: 0.8.1's survival plot was ~90 px tall).
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # name: (page, selector scrolled into view)
    "home": ("", "h1"),
    "math": ("functions/", "h2"),
    "survival": ("reproduction/", "img[alt=survival]"),
    "table1": ("reproduction/", "img[src$='table1_quick_fashion-mnist.png']"),
    "benchmarks": ("benchmarks/", "img"),
    "api-layers": ("reference/layers/", "h2"),
    "gallery-fid": ("gallery/fid/", "h1"),
}
WIDTHS = {1280: 900, 390: 844}


def main() -> None:
    from playwright.sync_api import sync_playwright

    out = ROOT / "results" / "docs_screenshots"
    out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(ROOT / "build" / "site")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        for width, height in WIDTHS.items():
            page = browser.new_page(viewport={"width": width, "height": height})
            for name, (path, selector) in PAGES.items():
                page.goto(base + path, wait_until="networkidle")
                element = page.locator(selector).first
                element.scroll_into_view_if_needed()
                box = element.bounding_box()
                page.screenshot(path=str(out / f"{name}-{width}.png"))
                if box and selector.startswith("img"):
                    print(f"{name} at {width} px: plot {box['width']:.0f} × {box['height']:.0f} px")
            page.close()
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
