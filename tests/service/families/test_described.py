"""Any ONNX file with a description beside it: a torchvision-style classifier exported with plain
torch.onnx.export, semantic logits and Stride-layout detection outputs; errors that name file and field."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from service.contract import InputSpec, ResizePolicy
from tests.conftest import constant_outputs_graph, png_bytes, write_model

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]

CLASSIFIER_YAML = """\
task: classification
labels_file: tinynet.labels.txt
input:
  name: input
  height: 224
  width: 224
  channels: 3
  resize: center_crop
  crop_fraction: 0.875
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
outputs:
  - {name: logits, layout: "batch,class", kind: logits}
"""


class TinyNet(torch.nn.Module):
    """A torchvision-style classifier: conv stem, pooling, linear head; exported without any metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4, padding=3), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(4))
        self.fc = torch.nn.Linear(16 * 16, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1)) * 8.0  # peaked probabilities, not a flat guess


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("described")
    torch.manual_seed(0)
    model = TinyNet().eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(folder / "tinynet.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                      )
    (folder / "tinynet.yaml").write_text(CLASSIFIER_YAML)
    (folder / "tinynet.labels.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def imagenet_by_hand(image: Image.Image) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize, written out with Pillow and numpy."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = 256, int(256 * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - 224) / 2.0), round((size[1] - 224) / 2.0)
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return ((crop - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("size", [(640, 480), (333, 517), (224, 224), (100, 60)])
def test_described_classifier_answers_equal_the_preprocessing_done_by_hand(make_client, classifier_dir: Path,
                                                                            size: tuple[int, int]) -> None:
    client = make_client(classifier_dir, jpeg_draft=False)
    image = photo(*size, seed=size[0])
    answer = client.post("/v1/classify?model=tinynet&top_k=5", files={"file": ("x.png", png_bytes(image))})
    assert answer.status_code == 200, answer.text
    session = ort.InferenceSession(str(classifier_dir / "tinynet.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": imagenet_by_hand(image)})[0][0].astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {p["class_id"]: p["score"] for p in answer.json()["predictions"]}
    assert next(p["label"] for p in answer.json()["predictions"]) == LABELS[int(np.argmax(expected))]
    for class_id, score in got.items():
        assert score == pytest.approx(expected[class_id], abs=1e-5)


def test_models_list_says_where_the_contract_came_from(make_client, classifier_dir: Path) -> None:
    info = make_client(classifier_dir).get("/v1/models/tinynet").json()
    assert info["status"] == "ready" and info["family"] == "stride"
    assert info["metadata_source"] == "sidecar tinynet.yaml"
    assert info["labels"] == LABELS and len(info["version"]) == 12  # file hash when none is stated


def test_described_semantic_logits(make_client, tmp_path: Path) -> None:
    """Per-pixel logits = the RGB channels: a red half and a blue half come back as classes 0 and 2."""
    weight = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["logits"])], "rgb",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [numpy_helper.from_array(weight, "w")])
    write_model(tmp_path / "rgbseg.onnx", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), None)
    (tmp_path / "rgbseg.yaml").write_text(
        "task: semantic_segmentation\nlabels: [red, green, blue]\n"
        "input: {height: 32, width: 32, channels: 3, resize: stretch, mean: [0, 0, 0], std: [1, 1, 1]}\n"
        "outputs: [{name: logits, layout: 'batch,class,height,width', kind: logits}]\n")
    image = Image.new("RGB", (64, 40), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 40))
    answer = make_client(tmp_path).post("/v1/segment?model=rgbseg", files={"file": ("x.png", png_bytes(image))})
    assert answer.status_code == 200, answer.text
    ids = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(answer.json()["segmentation"]["data"]))))
    assert ids.shape == (40, 64)
    assert (ids[:, :30] == 0).all() and (ids[:, 34:] == 2).all()
    assert {c["label"] for c in answer.json()["classes"]} == {"red", "blue"}


def test_described_detector_in_the_stride_layout(make_client, tmp_path: Path) -> None:
    spec = InputSpec(height=64, width=64, channels=3, resize=ResizePolicy.LETTERBOX, mean=(0, 0, 0), std=(1, 1, 1))
    boxes = np.array([[[8, 16, 24, 48], [40, 8, 56, 24]]], dtype=np.float32)
    scores = np.array([[[0.9, 0.05], [0.1, 0.8]]], dtype=np.float32)
    write_model(tmp_path / "det.onnx", constant_outputs_graph(spec, {"boxes": boxes, "scores": scores}), None)
    (tmp_path / "det.yaml").write_text(
        "task: detection\nlabels: [cat, dog]\n"
        "input: {height: 64, width: 64, channels: 3, resize: letterbox, mean: [0, 0, 0], std: [1, 1, 1]}\n"
        "outputs:\n  - {name: boxes, layout: 'batch,candidate,4', kind: boxes}\n"
        "  - {name: scores, layout: 'batch,candidate,class', kind: scores}\n"
        "detection: {confidence: 0.5, iou: 0.5, max_detections: 10}\n")
    client = make_client(tmp_path)
    image = png_bytes(Image.new("RGB", (128, 128), (90, 90, 90)))
    found = client.post("/v1/detect?model=det", files={"file": ("x.png", image)}).json()["detections"]
    assert [(d["label"], d["box"]) for d in found] == [
        ("cat", {"x1": 16.0, "y1": 32.0, "x2": 48.0, "y2": 96.0}),
        ("dog", {"x1": 80.0, "y1": 16.0, "x2": 112.0, "y2": 48.0})]
    # The description's own default confidence (0.5) applies when the request sets none; a request overrides it.
    assert len(client.post("/v1/detect?model=det&confidence=0.85", files={"file": ("x.png", image)}).json()[
        "detections"]) == 1


@pytest.mark.parametrize(("description", "says"), [
    ("task: classification\nlabels: [a]\n", "det.yaml: input: Field required"),
    ("task: detectoin\n", "det.yaml: task: Input should be"),
    ("- just\n- a list\n", "det.yaml: expected a mapping"),
    ("task: [unclosed\n", "det.yaml: not valid YAML"),
    ("task: classification\nlabels_file: missing.txt\n", "labels_file: missing.txt not found"),
    ("task: classification\nlabels: [a, b]\ninput: {height: 64, width: 64, channels: 3, resize: stretch, "
     "mean: [0, 0, 0], std: [1, 1, 1]}\noutputs: [{name: nope, layout: 'batch,class', kind: logits}]\n",
     "'nope' is not an output of the graph"),
])
def test_a_bad_description_fails_the_model_naming_file_and_field(make_client, tmp_path: Path, description: str,
                                                                  says: str) -> None:
    spec = InputSpec(height=64, width=64, channels=3, resize=ResizePolicy.STRETCH, mean=(0, 0, 0), std=(1, 1, 1))
    write_model(tmp_path / "det.onnx", constant_outputs_graph(spec, {"logits": np.zeros((1, 2))}), None)
    (tmp_path / "det.yaml").write_text(description)
    info = make_client(tmp_path).get("/v1/models/det").json()
    assert info["status"] == "failed"
    assert says in info["reason"], info["reason"]
