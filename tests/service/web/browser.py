"""Driving the web page in Debian's chromium with Playwright: shared by the browser tests and
`make screenshots` (tools/screenshots.py). Playwright's own browser download cannot work here, so the
system browser is launched by path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Playwright

from tests.conftest import BUNDLED_MODELS, REPO

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches out of the machine (no updates, sync, QUIC or background fetches).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "the browser tests need Debian's chromium: apt-get install -y chromium"
SCENE = REPO / "docs" / "samples" / "scene.png"
# The bundled dense models and a classifier: one of each task.
PAGE_MODELS = ("detector", "instance_seg", "segmenter", "keypoints", "lenet5")
ANSWER_TIMEOUT_MS = 60_000  # a loaded CI host runs a first inference slowly


def launch(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        raise RuntimeError(INSTALL_HINT)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


def link_models(directory: Path, names: tuple[str, ...] = PAGE_MODELS) -> Path:
    """A models directory holding only `names` (links to the bundled files): a quicker start."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.onnx").symlink_to(BUNDLED_MODELS / f"{name}.onnx")
    return directory


def run_on_page(page: Page, model: str, image: Path, **params: str) -> dict[str, Any]:
    """Pick `model`, set its parameters, give the page `image`; the answer the page drew, once drawn.

    Raises with the page's error line when the page reports an error instead.
    """
    page.wait_for_selector("body[data-state='idle'], body[data-state='ready'], body[data-state='done']")
    page.select_option("#model", model)
    for name, value in params.items():
        field = page.locator(f"#params [name='{name}']:enabled")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    page.evaluate("document.body.dataset.state = 'waiting'")  # so only this run's end counts below
    page.set_input_files("#file", str(image))
    page.wait_for_selector("body[data-state='done'], body[data-state='error']", timeout=ANSWER_TIMEOUT_MS)
    if page.get_attribute("body", "data-state") == "error":
        raise AssertionError(f"the page reported: {page.text_content('#error')}")
    return json.loads(page.text_content("#json") or "null")
