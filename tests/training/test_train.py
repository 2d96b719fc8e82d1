"""The training loop's promises: augmentation keeps the background, runs are seeded, the best epoch wins,
and the CLI goes train -> export -> evaluate end to end."""

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from service.contract import from_metadata_props
from training.checkpoint import Checkpoint
from training.cli import main
from training.data import ImageSet, ImageSplits, load_dataset, render_batch
from training.models import get_arch
from training.train import FitResult, TrainConfig, augment, background_value, fit

SPEC = get_arch("lenet5").default_input
Pair = tuple[torch.Tensor, torch.Tensor]  # inputs [N, 1, 32, 32], targets [N]


@pytest.fixture(scope="module")
def splits() -> ImageSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small_data(splits: ImageSplits) -> tuple[Pair, Pair]:
    def tensors(subset: ImageSet, n: int) -> Pair:
        return torch.from_numpy(render_batch(subset.images[:n], SPEC)), torch.from_numpy(subset.targets[:n])

    return tensors(splits.train, 256), tensors(splits.val, 64)


def test_augmentation_fills_with_background_not_zero() -> None:
    background = background_value(SPEC)
    assert background == pytest.approx(-0.306 / 0.324)
    blank = torch.full((4, 1, 32, 32), background)
    shifted = augment(blank, TrainConfig(max_translate=0.25), background, torch.Generator().manual_seed(0))
    assert torch.allclose(shifted, blank, atol=1e-5)


def test_augmentation_without_range_is_identity(splits: ImageSplits) -> None:
    x = torch.from_numpy(render_batch(splits.train.images[:4], SPEC))
    still = TrainConfig(max_rotation=0.0, max_scale=0.0, max_translate=0.0)
    assert torch.allclose(augment(x, still, background_value(SPEC), torch.Generator()), x, atol=1e-5)
    moved = augment(x, TrainConfig(), background_value(SPEC), torch.Generator().manual_seed(0))
    assert not torch.allclose(moved, x, atol=1e-2)


def _fit(data: tuple[Pair, Pair], seed: int, epochs: int = 2) -> FitResult:
    torch.manual_seed(seed)
    model = get_arch("lenet5").build(get_arch("lenet5").make_config())
    config = TrainConfig(epochs=epochs, seed=seed, patience=epochs)
    return fit(model, *data, config, background_value(SPEC), progress=False)


def test_training_is_deterministic_for_a_seed(small_data: tuple[Pair, Pair]) -> None:
    a, b, c = _fit(small_data, 0), _fit(small_data, 0), _fit(small_data, 1)
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    assert not torch.equal(a.best_state["features.0.weight"], c.best_state["features.0.weight"])


def test_the_best_validation_epoch_is_kept(small_data: tuple[Pair, Pair]) -> None:
    result = _fit(small_data, 0, epochs=4)
    rows = result.history
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert result.best_epoch == best["epoch"] and result.best_val_accuracy == best["val_accuracy"]


def test_cli_train_export_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--arch", "lenet5", "--data", "digits", "--out", str(run), "--epochs", "3",
                 "--arch-option", "activation=relu", "--no-progress"]) == 0  # fmt: skip
    checkpoint = Checkpoint.load(run / "checkpoint.pt")
    assert checkpoint.arch_config["activation"] == "relu" and checkpoint.train_config["epochs"] == 3
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert checkpoint.summary["best_val_accuracy"] > 0.5  # it learned something in 3 epochs

    model = tmp_path / "digits.onnx"
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(model), "--card"]) == 0
    meta = from_metadata_props(ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map)
    assert "activation=relu" in meta.architecture
    card = tmp_path / "digits"
    assert {p.name for p in card.iterdir()} >= {"README.md", "metrics.json", "split.json", "training_curves.png",
                                                  "confusion_matrix.png"}  # fmt: skip
    assert json.loads((card / "metrics.json").read_text())["test"]["accuracy"] == meta.metrics["test_accuracy"]

    capsys.readouterr()
    assert main(["evaluate", str(model)]) == 0
    assert f"accuracy       {meta.metrics['test_accuracy']:.4f}" in capsys.readouterr().out


def test_arch_options_are_typed() -> None:
    from training.cli import parse_arch_options

    assert parse_arch_options(["c3_table=False", "activation=relu", "pooling=max", "c3_table=false"]) == {
        "c3_table": False,
        "activation": "relu",
        "pooling": "max",
    }
