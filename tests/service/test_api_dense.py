"""HTTP tests of /v1/detect, /v1/segment and /v1/keypoints with models whose outputs are known exactly."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from service.contract import InputSpec, OutputSpec
from tests.conftest import constant_outputs_graph, png_bytes, tiny_metadata, write_model

SPEC = InputSpec(height=32, width=32, channels=3, resize="letterbox", pad_value=114, mean=(0, 0, 0), std=(1, 1, 1))
# A 64x32 image: letterboxed at scale 0.5 with 8 rows of padding above and below.
IMAGE = png_bytes(Image.new("RGB", (64, 32), (40, 80, 120)))

BOXES = np.array([[[8, 12, 24, 20], [9, 12, 24, 20], [0, 8, 8, 16]]], np.float32)
SCORES = np.array([[[0.9, 0.1], [0.8, 0.05], [0.2, 0.6]]], np.float32)


def outputs(*kinds: str) -> list[OutputSpec]:
    return [OutputSpec(name=kind, layout="batch,candidate,x", kind=kind) for kind in kinds]


@pytest.fixture
def dense_client(make_client, tmp_path: Path):
    labels = ["circle", "square"]
    write_model(tmp_path / "det.onnx", constant_outputs_graph(SPEC, {"boxes": BOXES, "scores": SCORES}),
                tiny_metadata(task="detection", labels=labels, input=SPEC, outputs=outputs("boxes", "scores"),
                              detection={"strides": [8]}))
    prototypes = np.full((1, 1, 8, 8), -10.0, np.float32)
    prototypes[0, 0, 3:5, 2:6] = 10.0  # input x 8..24, y 12..20 -> original x 16..48, y 8..24
    coefficients = np.ones((1, 3, 1), np.float32)
    write_model(tmp_path / "inst.onnx",
                constant_outputs_graph(SPEC, {"boxes": BOXES, "scores": SCORES, "mask_coefficients": coefficients,
                                              "mask_prototypes": prototypes}),
                tiny_metadata(task="instance_segmentation", labels=labels, input=SPEC,
                              outputs=outputs("boxes", "scores", "mask_coefficients", "mask_prototypes"),
                              detection={"strides": [8]}, masks={"prototype_stride": 4, "prototypes": 1}))
    logits = np.zeros((1, 3, 32, 32), np.float32)
    logits[0, 0] = 0.5
    logits[0, 1, 8:24, :16] = 5.0
    logits[0, 2, 8:24, 16:] = 5.0
    write_model(tmp_path / "sem.onnx", constant_outputs_graph(SPEC, {"logits": logits}),
                tiny_metadata(task="semantic_segmentation", labels=["background", *labels], input=SPEC,
                              outputs=[OutputSpec(name="logits", layout="batch,class,height,width",
                                                  kind="logits")]))
    joints = np.array([[[[16, 16, 0.9], [12, 10, 0.2]]] * 3], np.float32)
    write_model(tmp_path / "pose.onnx",
                constant_outputs_graph(SPEC, {"boxes": BOXES, "scores": SCORES[..., :1], "keypoints": joints}),
                tiny_metadata(task="keypoints", labels=["person"], input=SPEC,
                              outputs=outputs("boxes", "scores", "keypoints"), detection={"strides": [8]},
                              keypoints={"names": ["head", "neck"], "skeleton": [(0, 1)]}))
    return make_client(tmp_path)


def post(client, path: str, image: bytes = IMAGE):
    return client.post(path, content=image, headers={"content-type": "image/png"})


def test_detect_undoes_the_letterbox_sorts_and_suppresses(dense_client) -> None:
    response = post(dense_client, "/v1/detect?model=det")
    assert response.status_code == 200
    body = response.json()
    assert body["task"] == "detection" and body["image"] == {"width": 64, "height": 32, "format": "PNG"}
    assert body["geometry"] == {"exif_orientation": 1, "resize": "letterbox", "scale_x": 0.5, "scale_y": 0.5,
                                "pad_x": 0.0, "pad_y": 8.0, "input_width": 32, "input_height": 32}
    found = [(d["label"], round(d["score"], 3), d["box"]) for d in body["detections"]]
    assert found == [
        ("circle", 0.9, {"x1": 16.0, "y1": 8.0, "x2": 48.0, "y2": 24.0}),  # its overlapping twin was suppressed
        ("square", 0.6, {"x1": 0.0, "y1": 0.0, "x2": 16.0, "y2": 16.0}),
    ]


@pytest.mark.parametrize(
    ("query", "labels"),
    [
        ("confidence=0.7", ["circle"]),
        ("classes=square", ["square"]),
        ("classes=0", ["circle"]),
        ("max_detections=1", ["circle"]),
        ("iou=0.95", ["circle", "circle", "square"]),
        ("confidence=0.99", []),
    ],
)
def test_detect_parameters(dense_client, query: str, labels: list[str]) -> None:
    body = post(dense_client, f"/v1/detect?model=det&{query}").json()
    assert [d["label"] for d in body["detections"]] == labels


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        ("/v1/detect?model=det&classes=giraffe", "invalid_parameter", 422),
        ("/v1/detect?model=det&confidence=1.5", "invalid_parameter", 422),
        ("/v1/detect?model=sem", "wrong_task", 400),
        ("/v1/classify?model=det", "wrong_task", 400),
        ("/v1/keypoints?model=det", "wrong_task", 400),
        ("/v1/segment?model=det", "wrong_task", 400),
        ("/v1/segment?model=sem&mask_format=polygon", "invalid_parameter", 422),
        ("/v1/segment?model=inst&mask_format=jpeg", "invalid_parameter", 422),
    ],
)
def test_dense_errors(dense_client, path: str, code: str, status: int) -> None:
    response = post(dense_client, path)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_instance_masks_as_rle_decode_with_pycocotools(dense_client) -> None:
    body = post(dense_client, "/v1/segment?model=inst").json()
    assert body["mask_format"] == "rle" and body["notes"] == []
    first = body["instances"][0]
    mask = coco_mask.decode({"size": first["mask"]["size"], "counts": first["mask"]["counts"].encode()})
    assert mask.shape == (32, 64)
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 16) <= 2 and abs(xs.max() - 47) <= 2 and abs(ys.min() - 8) <= 2 and abs(ys.max() - 23) <= 2
    assert first["area"] == int(mask.sum())
    assert body["instances"][1]["area"] == 0  # the square's box does not reach the prototype's blob


def test_instance_masks_as_polygons_and_png_agree_with_rle(dense_client) -> None:
    rle_mask = post(dense_client, "/v1/segment?model=inst").json()["instances"][0]["mask"]
    reference = coco_mask.decode({"size": rle_mask["size"], "counts": rle_mask["counts"].encode()}).astype(bool)
    polygons = post(dense_client, "/v1/segment?model=inst&mask_format=polygon").json()["instances"][0]["mask"]
    flat = [[float(v) for point in polygon for v in point] for polygon in polygons]
    from_polygons = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(flat, 32, 64))).astype(bool)
    np.testing.assert_array_equal(from_polygons, reference)
    png = post(dense_client, "/v1/segment?model=inst&mask_format=png").json()["instances"][0]["mask"]
    from_png = np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))).astype(bool)
    np.testing.assert_array_equal(from_png, reference)


def test_response_budget_switches_to_rle_then_drops_masks(make_client, dense_client) -> None:
    models_dir = Path(dense_client.app.state.settings.models_dir)
    small = make_client(models_dir, max_response_bytes=200)
    body = post(small, "/v1/segment?model=inst&mask_format=png").json()
    assert body["mask_format"] == "rle" and "sent as rle instead" in body["notes"][0]
    tiny = make_client(models_dir, max_response_bytes=10)
    body = post(tiny, "/v1/segment?model=inst&mask_format=png").json()
    assert body["instances"][0]["mask"] is None and "masks dropped" in body["notes"][-1]


def test_semantic_png_map_at_original_size(dense_client) -> None:
    body = post(dense_client, "/v1/segment?model=sem").json()
    assert body["task"] == "semantic_segmentation" and body["segmentation"]["size"] == [32, 64]
    ids = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["segmentation"]["data"]))))
    assert ids.shape == (32, 64) and (ids[:, :31] == 1).all() and (ids[:, 33:] == 2).all()
    fractions = {c["label"]: c["pixel_fraction"] for c in body["classes"]}
    assert set(fractions) == {"circle", "square"} and sum(fractions.values()) == pytest.approx(1.0)


def test_semantic_rle_gives_one_mask_per_present_class(dense_client) -> None:
    body = post(dense_client, "/v1/segment?model=sem&mask_format=rle").json()
    masks = body["segmentation"]["masks"]
    assert body["segmentation"]["format"] == "rle" and {m["label"] for m in masks} == {"circle", "square"}
    union = sum(coco_mask.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()}) for m in masks)
    assert (union == 1).all()


def test_keypoints_in_original_pixels_with_skeleton_names(dense_client) -> None:
    body = post(dense_client, "/v1/keypoints?model=pose&keypoint_confidence=0.5").json()
    assert body["skeleton"] == [["head", "neck"]]
    person = body["instances"][0]
    assert person["label"] == "person" and person["box"] == {"x1": 16.0, "y1": 8.0, "x2": 48.0, "y2": 24.0}
    assert person["keypoints"] == [
        {"name": "head", "x": 32.0, "y": 16.0, "score": pytest.approx(0.9), "visible": True},
        {"name": "neck", "x": 24.0, "y": 4.0, "score": pytest.approx(0.2), "visible": False},
    ]


def test_exif_rotation_is_applied_before_geometry(dense_client) -> None:
    stored = Image.new("RGB", (32, 64), (40, 80, 120))  # stored portrait, displayed landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    body = post(dense_client, "/v1/detect?model=det", png_bytes(stored, "JPEG", exif=exif.tobytes())).json()
    assert body["image"]["width"] == 64 and body["image"]["height"] == 32
    assert body["geometry"]["exif_orientation"] == 6
    assert body["detections"][0]["box"] == {"x1": 16.0, "y1": 8.0, "x2": 48.0, "y2": 24.0}


def test_default_segment_model_prefers_instances_and_lists_sections(dense_client) -> None:
    assert post(dense_client, "/v1/segment").json()["task"] == "instance_segmentation"
    info = dense_client.get("/v1/models/inst").json()
    assert info["task"] == "instance_segmentation"
    assert info["masks"] == {"prototype_stride": 4, "prototypes": 1, "threshold": 0.5}
    assert dense_client.get("/v1/models/pose").json()["keypoints"]["names"] == ["head", "neck"]
