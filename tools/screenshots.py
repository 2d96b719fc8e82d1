"""`make screenshots`: the README's picture of the web page (docs/images/page.png), made the way the browser
tests drive the page: a real server with the bundled models, Debian's chromium, the shipped scene."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.conftest import REPO
from tests.service.test_server_process import start_server
from tests.service.web.browser import SCENE, launch, link_models, run_on_page

OUT = REPO / "docs" / "images" / "page.png"
VIEWPORT = {"width": 1280, "height": 860}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="instance_seg", help="the model shown answering (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base, server = start_server(link_models(Path(scratch) / "models"), STRIDE_DRAIN_DELAY_S="0",
                                    STRIDE_ACCESS_LOG="false")
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
                page.goto(base + "/")
                run_on_page(page, args.model, SCENE)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
