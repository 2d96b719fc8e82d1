"""The embedding task plug-in: generated identities, metrics, CosFace, a tiny end-to-end train + export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.contract import Task, from_metadata_props
from training.cli import main as training_main
from training.data import identities
from training.tasks import embedding as task


@pytest.mark.parametrize(("ids", "per", "count"), [([], 3, 0), ([5], 1, 1), ([1, 2, 3], 2, 6)])
def test_views_come_per_identity_in_order(ids: list[int], per: int, count: int) -> None:
    images, targets = identities.views(ids, per)
    assert len(images) == count and targets.tolist() == [i for i in ids for _ in range(per)]
    assert all(image.size == (identities.SIZE, identities.SIZE) and image.mode == "RGB" for image in images)


def test_views_are_reproducible_and_differ_by_view_and_identity() -> None:
    first = np.asarray(identities.view(7, 0))
    assert np.array_equal(first, np.asarray(identities.view(7, 0)))
    assert not np.array_equal(first, np.asarray(identities.view(7, 1)))
    assert identities.identity(7) == identities.identity(7) != identities.identity(8)


def test_the_identity_ranges_do_not_overlap() -> None:
    assert identities.TRAIN_FIRST + task.EmbeddingConfig().identities <= identities.CALIBRATION_FIRST
    assert identities.CALIBRATION_FIRST + 2 * task.EmbeddingConfig().eval_identities <= identities.TEST_FIRST


E = np.eye(3)


@pytest.mark.parametrize(("probes", "probe_ids", "k", "expected"), [
    (E, np.array([0, 1, 2]), 1, 1.0),
    (E[[1, 2, 0]], np.array([0, 1, 2]), 1, 0.0),
    (np.array([[1.0, 0.9, 0.0]]), np.array([1]), 1, 0.0),
    (np.array([[1.0, 0.9, 0.0]]), np.array([1]), 2, 1.0),
    (np.zeros((0, 3)), np.zeros(0, int), 1, math.nan),
])
def test_recall_at_k(probes: np.ndarray, probe_ids: np.ndarray, k: int, expected: float) -> None:
    got = task.recall_at(E, np.array([0, 1, 2]), probes, probe_ids, k)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize(("scores", "far", "expected"), [
    (np.linspace(0, 0.99, 100), 0.01, 0.98),  # one of 100 impostors above 0.98
    (np.linspace(0, 0.99, 100), 0.0, 0.99),  # none above the highest
    (np.array([0.5]), 0.01, 0.5),
    (np.zeros(0), 0.01, math.nan),
])
def test_threshold_at_far(scores: np.ndarray, far: float, expected: float) -> None:
    got = task.threshold_at_far(scores, far)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    if len(scores):
        assert np.mean(scores > got) <= far


def test_open_set_counts_right_and_confident_matches_only() -> None:
    gallery, ids = E, np.array([0, 1, 2])
    probes = np.array([[1, 0.1, 0], [0, 1, 0.9], [0.2, 0, 1]], dtype=float)  # right, right but unsure, right
    impostors = np.array([[0.6, 0.6, 0.5]])
    figures = task.open_set(gallery, ids, probes, np.array([0, 1, 2]), impostors, threshold=0.8)
    assert figures["tar"] == pytest.approx(2 / 3) and figures["far"] == 0.0
    wrong = task.open_set(gallery, ids, probes, np.array([1, 1, 2]), impostors, threshold=0.0)
    assert wrong["tar"] == pytest.approx(2 / 3) and wrong["far"] == 1.0


def test_cosface_margin_raises_the_loss_and_vectors_are_unit_length() -> None:
    torch.manual_seed(0)
    model = task.build_model(task.EmbeddingConfig(width=8, dimension=16)).eval()
    vectors = model(torch.randn(4, 3, 32, 32))
    assert vectors.shape == (4, 16) and torch.allclose(vectors.norm(dim=1), torch.ones(4), atol=1e-5)
    head = task.CosFace(16, 5, scale=30, margin=0.35)
    targets = torch.tensor([0, 1, 2, 3])
    with_margin = head(vectors, targets)
    head.margin = 0.0
    assert with_margin > head(vectors, targets)


@pytest.mark.parametrize(("argv", "expected"), [
    ([], False),
    (["train", "--task", "embedding", "--out", "x"], True),
    (["train", "--task=embedding", "--out", "x"], True),
    (["train", "--task", "detection", "--data", "d", "--out", "x"], False),
    (["train", "--arch", "lenet5", "--data", "digits", "--out", "x"], False),
    (["export", "missing.pt", "--out", "x.onnx"], False),
    (["bundle"], False),
])
def test_cli_routes_embedding_commands_here(argv: list[str], expected: bool) -> None:
    assert task.wants_embedding(argv) is expected


def test_train_export_evaluate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny run through the CLI: the checkpoint loads with weights_only=True, the ONNX file states the
    embedding contract with a threshold and golden samples, and its figures are measured on unseen ids."""
    run = tmp_path / "run"
    assert training_main(["train", "--task", "embedding", "--out", str(run), "--identities", "6", "--views", "3",
                          "--epochs", "1", "--width", "8", "--batch-size", "8", "--eval-identities", "4",
                          "--eval-probes", "2", "--no-progress"]) == 0
    payload = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert payload["kind"] == "embedding" and payload["config"]["identities"] == 6
    assert task.wants_embedding(["export", str(run / "checkpoint.pt"), "--out", "x.onnx"])

    out = tmp_path / "tiny-embedder.onnx"
    assert training_main(["export", str(run / "checkpoint.pt"), "--out", str(out), "--card"]) == 0
    meta = from_metadata_props({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    assert meta.task is Task.EMBEDDING and meta.labels == []
    assert meta.outputs[0].kind == "embedding" and meta.outputs[0].name == "embedding"
    assert meta.embedding is not None and meta.embedding.normalized and meta.embedding.threshold is not None
    assert meta.golden is not None and len(meta.golden.samples) == 4
    assert set(meta.metrics) >= {"recall_at_1", "recall_at_5", "tar_at_far_1pct"}
    card = out.with_suffix(".md").read_text()
    assert "recall@1" in card and "CosFace" in card

    capsys.readouterr()
    assert task.wants_embedding(["evaluate", str(out)])
    assert training_main(["evaluate", str(out), "--identities", "3", "--probes", "1"]) == 0
    assert '"recall_at_1"' in capsys.readouterr().out
