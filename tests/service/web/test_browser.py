"""The page in a real browser (Debian's chromium via Playwright) against a real server with the bundled
models: each task's answer must show in the canvas pixels, in the class colours the API's drawing uses."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from service.schemas import InstanceSegmentResponse, SemanticSegmentResponse
from service.tasks.drawing import MASK_ALPHA, UNPAINTED_LABELS, class_color, instance_mask, semantic_masks
from tests.conftest import png_bytes
from tests.service.test_server_process import start_server
from tests.service.web.browser import ANSWER_TIMEOUT_MS, SCENE, launch, run_on_page
from tests.service.web.conftest import stop

COLOUR_TOLERANCE = 12  # per channel: 8-bit alpha and the browser's compositing round differently
LINE_INSET = 1  # canvas pixels: the box outline (3 px) starts at the box edge and runs inwards


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


class Console:
    def __init__(self) -> None:
        self.errors: list[str] = []


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    console = Console()
    page.on("console", lambda message: console.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: console.errors.append(str(error)))
    try:
        yield page, console
    finally:
        context.close()


def canvas_pixels(page: Page, keep: Path) -> np.ndarray:
    shot = page.locator("#canvas").screenshot(path=str(keep))
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.int16)


def near(pixels: np.ndarray, color: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    return (np.abs(pixels - np.asarray(color, dtype=np.int16)) <= COLOUR_TOLERANCE).all(axis=-1)


def edge_points(box: dict[str, float], k: float, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Canvas pixels on the left, right and bottom outline of a box (the top one may hold its label)."""
    x0, y0 = int(np.floor(box["x1"])), int(np.floor(box["y1"]))
    x1, y1 = max(x0 + 1, int(np.ceil(box["x2"]))), max(y0 + 1, int(np.ceil(box["y2"])))
    left, right = int(x0 * k) + LINE_INSET, int(x1 * k) - 1 - LINE_INSET
    bottom = int(y1 * k) - 1 - LINE_INSET
    rows = np.linspace(y0 * k + 0.3 * (y1 - y0) * k, bottom, 8).astype(int)
    columns = np.linspace(left, right, 8).astype(int)
    points = [(r, left) for r in rows] + [(r, right) for r in rows] + [(bottom, c) for c in columns]
    return [(min(r, shape[0] - 1), min(c, shape[1] - 1)) for r, c in points]


def box_iou(a: dict[str, float], b: dict[str, float]) -> float:
    w = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    h = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    union = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - w * h
    return w * h / union if union > 0 else 0.0


def assert_boxes_outlined(pixels: np.ndarray, detections: list[dict[str, Any]], k: float) -> None:
    """Every box whose outline no later box draws over (class-aware NMS keeps overlapping boxes of
    different classes, e.g. a clipped triangle also taken for a square) is outlined in its class colour."""
    assert detections, "the model found nothing on the scene: nothing to check"
    visible = [d for i, d in enumerate(detections)
               if all(box_iou(d["box"], later["box"]) < 0.3 for later in detections[i + 1:])]
    assert visible, "every box is drawn over by another: nothing to check"
    for d in visible:
        points = edge_points(d["box"], k, pixels.shape)
        hits = sum(bool(near(pixels[r, c], class_color(d["class_id"]))) for r, c in points)
        assert hits >= 0.6 * len(points), f"{d['label']} {d['box']}: {hits} of {len(points)} edge pixels coloured"


def image_centres(mask: np.ndarray, k: float, erode: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask pixels at least `erode` pixels inside the mask, and their centres in canvas pixels."""
    inner = mask.copy()
    for _ in range(erode):
        inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        inner[[0, -1], :] = inner[:, [0, -1]] = False
    ys, xs = np.nonzero(inner)
    return ys, xs, inner


def assert_painted(pixels: np.ndarray, scene: np.ndarray, mask: np.ndarray, class_id: int, k: float,
                   exclude: np.ndarray) -> bool:
    """Inside the mask the canvas shows the scene blended with the class colour; False: too thin to tell."""
    ys, xs, _ = image_centres(mask & ~exclude, k)
    if len(ys) < 5:
        return False
    shown = pixels[((ys + 0.5) * k).astype(int), ((xs + 0.5) * k).astype(int)]
    expected = scene[ys, xs] * (1 - MASK_ALPHA) + np.asarray(class_color(class_id)) * MASK_ALPHA
    matching = near(shown, np.round(expected).astype(np.int16)).mean()
    assert matching >= 0.7, f"class {class_id}: only {matching:.0%} of the mask shows its colour"
    return True


def box_regions(detections: list[dict[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """Box outlines and label tags (image pixels), where a mask's colour may be covered."""
    covered = np.zeros(shape, bool)
    for d in detections:
        x0, y0 = int(d["box"]["x1"]), int(d["box"]["y1"])
        x1, y1 = int(np.ceil(d["box"]["x2"])), int(np.ceil(d["box"]["y2"]))
        covered[max(0, y0 - 6):y0 + 6, max(0, x0 - 40):] = True  # the label tag
        covered[y0:y1, x0:x0 + 2] = covered[y0:y1, max(0, x1 - 2):x1] = True
        covered[max(0, y1 - 2):y1, x0:x1] = True
    return covered


CASES = [
    ("detector", "detection", {}),
    ("instance_seg", "instance_segmentation", {"mask_format": "rle"}),
    ("instance_seg", "instance_segmentation", {"mask_format": "polygon"}),
    ("instance_seg", "instance_segmentation", {"mask_format": "png"}),
    ("segmenter", "semantic_segmentation", {"mask_format": "png"}),
    ("segmenter", "semantic_segmentation", {"mask_format": "rle"}),
    ("keypoints", "keypoints", {}),
    ("lenet5", "classification", {"top_k": "3"}),
]


@pytest.mark.parametrize(("model", "task", "params"), CASES,
                         ids=[f"{m}-{p.get('mask_format', 'default')}" for m, _, p in CASES])
def test_each_task_is_drawn_on_the_canvas(page: tuple[Page, Console], bundled_server: str, tmp_path: Path,
                                          model: str, task: str, params: dict[str, str]) -> None:
    browser_page, console = page
    browser_page.goto(bundled_server + "/")
    answer = run_on_page(browser_page, model, SCENE, **params)
    assert answer["model"] == model and answer["task"] == task
    pixels = canvas_pixels(browser_page, tmp_path / f"{task}-{model}.png")
    browser_page.screenshot(path=str(tmp_path / f"page-{task}-{model}.png"), full_page=True)
    scene = np.asarray(Image.open(SCENE).convert("RGB")).astype(np.float64)
    height, width = scene.shape[:2]
    assert (answer["image"]["width"], answer["image"]["height"]) == (width, height)
    k = pixels.shape[1] / width
    assert k > 1 and abs(pixels.shape[0] / height - k) < 0.05  # enlarged, aspect ratio kept

    if task in ("detection", "keypoints"):
        found = answer["detections"] if task == "detection" else answer["instances"]
        assert_boxes_outlined(pixels, found, k)
    if task == "keypoints":
        joints = [(j, p["class_id"]) for p in answer["instances"] for j in p["keypoints"] if j["visible"]]
        assert joints
        hits = sum(bool(near(pixels[int(j["y"] * k), int(j["x"] * k)], class_color(c))) for j, c in joints)
        assert hits >= 0.7 * len(joints)
    if task == "instance_segmentation":
        parsed = InstanceSegmentResponse.model_validate(answer)
        assert parsed.mask_format == params["mask_format"]
        assert_boxes_outlined(pixels, answer["instances"], k)
        covered = box_regions(answer["instances"], (height, width))
        masks = [instance_mask(i.mask, height, width) for i in parsed.instances]
        overlap = np.sum([m.astype(int) for m in masks if m is not None], axis=0) > 1
        checked = [assert_painted(pixels, scene, mask, instance.class_id, k, covered | overlap)
                   for instance, mask in zip(parsed.instances, masks, strict=True) if mask is not None]
        assert sum(checked) >= 2, "fewer than two masks were large enough to check"
    if task == "semantic_segmentation":
        parsed = SemanticSegmentResponse.model_validate(answer)
        legend = np.zeros((height, width), bool)
        legend[int(height - (len(parsed.classes) * 23 + 6) / k * 1.2):, : int(150 / k)] = True
        labels = {c.class_id: c.label for c in parsed.classes}
        masks = {labels[class_id]: (class_id, mask) for class_id, mask in semantic_masks(parsed)}
        checked = [assert_painted(pixels, scene, mask, class_id, k, legend)
                   for label, (class_id, mask) in masks.items() if label not in UNPAINTED_LABELS]
        assert sum(checked) >= 2, "fewer than two classes were large enough to check"
        ys, xs, _ = image_centres(masks["background"][1] & ~legend, k)
        background = pixels[((ys + 0.5) * k).astype(int), ((xs + 0.5) * k).astype(int)]
        assert near(background, scene[ys, xs].astype(np.int16)).mean() > 0.95  # left as it is
    if task == "classification":
        top = answer["predictions"][0]
        bar = near(pixels, class_color(top["class_id"])).sum()
        assert bar >= 200 * top["score"], f"the top class bar shows {bar} pixels"
    assert console.errors == []


def test_api_errors_are_shown_as_the_api_states_them(page: tuple[Page, Console], bundled_server: str) -> None:
    browser_page, console = page
    browser_page.goto(bundled_server + "/")
    with pytest.raises(AssertionError, match=r"the page reported: 4\d\d "):
        run_on_page(browser_page, "detector", SCENE, classes="giraffe")
    shown = browser_page.text_content("#error") or ""
    assert "invalid_parameter" in shown and "giraffe" in shown
    # Chrome notes every 4xx answer on the console; anything else would be the page's own fault
    assert all("status of 4" in error for error in console.errors)


def test_the_key_field_unlocks_a_keyed_service(page: tuple[Page, Console], tiny_model_dir: Path,
                                               tmp_path: Path) -> None:
    base, process = start_server(tiny_model_dir, STRIDE_API_KEY="page-key", STRIDE_DRAIN_DELAY_S="0")
    try:
        browser_page, _ = page
        browser_page.goto(base + "/")
        browser_page.wait_for_selector("body[data-state='needs-key']")
        assert "401 unauthorized" in (browser_page.text_content("#error") or "")
        browser_page.fill("#api-key", "page-key")
        browser_page.dispatch_event("#api-key", "change")
        image = tmp_path / "white.png"
        image.write_bytes(png_bytes(Image.new("L", (16, 16), 255)))
        answer = run_on_page(browser_page, "tiny", image, top_k="1")
        assert answer["predictions"][0]["label"] == "bright"
        browser_page.reload()  # the key stays for the tab's session
        assert browser_page.input_value("#api-key") == "page-key"
        browser_page.wait_for_selector("body[data-state='idle']")
        assert json.loads(browser_page.evaluate("JSON.stringify(sessionStorage)")) == {"stride.apiKey": "page-key"}
    finally:
        stop(process)


def test_the_api_docs_page_runs_under_its_policy(page: tuple[Page, Console], bundled_server: str) -> None:
    browser_page, console = page
    browser_page.goto(bundled_server + "/docs")
    browser_page.wait_for_selector("#swagger-ui .swagger-ui", timeout=ANSWER_TIMEOUT_MS)  # its scripts ran
    browser_page.wait_for_load_state("networkidle")  # the OpenAPI document and the page's images came
    # The API itself is rendered (Swagger UI reads FastAPI's OpenAPI 3.1), not "Unable to render".
    browser_page.wait_for_selector(".opblock-summary-path[data-path='/v1/detect']", timeout=ANSWER_TIMEOUT_MS)
    assert console.errors == []  # a blocked script, style, image or fetch is reported here
