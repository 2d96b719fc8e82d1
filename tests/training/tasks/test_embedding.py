"""The embedding plug-in: generated identities, its metrics, CosFace, the request checks, a legacy file, and a
tiny run through the framework (prepare -> trainer.fit -> Checkpoint -> export_checkpoint -> card)."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.contract import Task
from training.cards import CardContext, write_card
from training.checkpoint import Checkpoint
from training.data import identities
from training.export import ExportResult, export_checkpoint, open_session, read_metadata
from training.registry import get_arch
from training.tasks import embedding as task
from training.tasks import get_task
from training.tasks.base import EvalRequest, TrainRequest
from training.trainer import FitResult, fit

TINY_ARCH = {"width": 8, "dimension": 16}
TINY = task.EmbeddingTrainConfig(identities=40, views=4, epochs=1, batch_size=32, eval_identities=10, eval_probes=2,
                                  val_identities=5, max_minutes=0.0, threads=1)


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two long trainings share this machine
    yield
    torch.set_num_threads(before)


# -------------------------------------------------------------------------------------------------- data
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


@pytest.mark.parametrize(("overrides", "ok"), [
    ({}, True),  # the defaults
    ({"identities": identities.CALIBRATION_FIRST}, True),
    ({"identities": identities.CALIBRATION_FIRST + 1}, False),  # training runs into calibration
    ({"eval_identities": 25_001}, False),  # calibration runs into validation
    ({"val_identities": 25_001}, False),  # validation runs into test
    ({"val_identities": 0}, True),  # no validation
    ({"identities": 0}, False),
    ({"eval_probes": 0}, False),
])
def test_identity_ranges_are_checked(overrides: dict[str, int], ok: bool) -> None:
    config = task.EmbeddingTrainConfig(**overrides)
    if ok:
        task.check_identity_ranges(config)
    else:
        with pytest.raises(ValueError):
            task.check_identity_ranges(config)


def test_protocol_enrols_view_zero_and_takes_impostors_from_the_next_identities() -> None:
    p = task.protocol(identities.TEST_FIRST, 3, 2)
    assert p.gallery_ids.tolist() == [identities.TEST_FIRST + i for i in range(3)]
    assert p.probe_ids.tolist() == [identities.TEST_FIRST + i for i in range(3) for _ in range(2)]
    assert len(p.gallery) == 3 and len(p.probes) == len(p.impostors) == 6
    assert np.array_equal(np.asarray(p.gallery[0]), np.asarray(identities.view(identities.TEST_FIRST, 0)))
    assert np.array_equal(np.asarray(p.impostors[0]), np.asarray(identities.view(identities.TEST_FIRST + 3, 1)))


# ----------------------------------------------------------------------------------------------- metrics
E = np.eye(3)
IDS = np.array([0, 1, 2])


@pytest.mark.parametrize(("probes", "probe_ids", "k", "expected"), [
    (E, IDS, 1, 1.0),
    (E[[1, 2, 0]], IDS, 1, 0.0),
    (np.array([[1.0, 0.9, 0.0]]), np.array([1]), 1, 0.0),
    (np.array([[1.0, 0.9, 0.0]]), np.array([1]), 2, 1.0),
    (np.zeros((0, 3)), np.zeros(0, int), 1, math.nan),
])
def test_recall_at_k(probes: np.ndarray, probe_ids: np.ndarray, k: int, expected: float) -> None:
    got = task.recall_at(E, IDS, probes, probe_ids, k)
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


PROBES = np.array([[1, 0.1, 0], [0, 1, 0.9], [0.2, 0, 1]], dtype=float)  # right, right but unsure, right
IMPOSTORS = np.array([[0.6, 0.6, 0.5]])


@pytest.mark.parametrize(("probes", "probe_ids", "impostors", "threshold", "tar", "far"), [
    (PROBES, IDS, IMPOSTORS, 0.8, 2 / 3, 0.0),
    (PROBES, np.array([1, 1, 2]), IMPOSTORS, 0.0, 2 / 3, 1.0),  # the first probe's best match is wrong
    (PROBES, IDS, np.zeros((0, 3)), 0.8, 2 / 3, math.nan),  # no impostors: no false accept rate
    (np.zeros((0, 3)), np.zeros(0, int), IMPOSTORS, 0.8, math.nan, 0.0),  # no probes: no true accept rate
])
def test_open_set_counts_right_and_confident_matches_only(probes: np.ndarray, probe_ids: np.ndarray,
                                                          impostors: np.ndarray, threshold: float, tar: float,
                                                          far: float) -> None:
    figures = task.open_set(E, IDS, probes, probe_ids, impostors, threshold=threshold)
    assert figures["threshold"] == threshold
    for key, expected in (("tar", tar), ("far", far)):
        assert (math.isnan(figures[key]) and math.isnan(expected)) or figures[key] == pytest.approx(expected)


@pytest.mark.parametrize(("threshold", "keys"), [
    (None, {"recall_at_1", "recall_at_5", "tar_at_far_1pct"}),
    (0.8, {"recall_at_1", "recall_at_5", "tar_at_far_1pct", "tar_at_threshold", "far_at_threshold"}),
])
def test_protocol_metrics_add_the_shipped_thresholds_rates_only_with_one(threshold: float | None,
                                                                         keys: set[str]) -> None:
    metrics = task.protocol_metrics(task.Vectors(E, IDS, PROBES, IDS, IMPOSTORS), threshold)
    assert set(metrics) == keys and metrics["recall_at_1"] == 1.0


@pytest.mark.parametrize(("probes", "probe_ids", "expected"), [
    (E, IDS, [1.0, 1.0, 1.0]),
    (E[[1]], np.array([0]), [0.0]),
    (np.zeros((0, 3)), np.zeros(0, int), []),
])
def test_genuine_scores_compare_each_probe_with_its_own_enrolled_view(probes: np.ndarray, probe_ids: np.ndarray,
                                                                      expected: list[float]) -> None:
    got = task.genuine_scores(task.Vectors(E, IDS, probes, probe_ids, np.zeros((0, 3))))
    assert got.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(("scores", "total", "last_bin"), [
    (np.zeros(0), 0, 0),
    (np.array([-1.0, 0.0, 1.0]), 3, 1),
    (np.array([1.0000001, 0.99]), 2, 2),  # float error above 1 still lands in the last bin
])
def test_score_histogram_covers_minus_one_to_one(scores: np.ndarray, total: int, last_bin: int) -> None:
    counts = task.score_histogram(scores)
    assert len(counts) == task.HISTOGRAM_BINS and sum(counts) == total and counts[-1] == last_bin


# --------------------------------------------------------------------------------------------- training
def test_cosface_margin_raises_the_loss_and_vectors_are_unit_length() -> None:
    torch.manual_seed(0)
    spec = get_arch("embednet")
    model = spec.build(spec.make_config(TINY_ARCH)).eval()
    vectors = model(torch.randn(4, 3, 32, 32))
    assert vectors.shape == (4, 16) and torch.allclose(vectors.norm(dim=1), torch.ones(4), atol=1e-5)
    head = task.CosFace(16, 5, scale=30, margin=0.35)
    targets = torch.tensor([0, 1, 2, 3])
    with_margin = head(vectors, targets)
    head.margin = 0.0
    assert with_margin > head(vectors, targets)


@pytest.mark.parametrize("n", [0, 3])
def test_augment_keeps_the_shape_and_follows_the_generator(n: int) -> None:
    batch = torch.ones(n, 3, 4, 4)
    first = task.augment(batch, torch.Generator().manual_seed(1))
    assert first.shape == batch.shape
    assert torch.equal(first, task.augment(batch, torch.Generator().manual_seed(1)))
    if n:
        assert not torch.equal(first, batch)


@pytest.mark.parametrize(("request_", "message"), [
    (TrainRequest(data="digits", arch="embednet"), "identities only"),
    (TrainRequest(data="identities", arch="lenet5"), "does not serve"),
    (TrainRequest(data="identities", arch="embednet", count=7), "--identities"),
    (TrainRequest(data="identities", arch="embednet", image_size=64), "32 x 32"),
    (TrainRequest(data="identities", arch="embednet", arch_options={"depth": 3}), "no config option"),
])
def test_prepare_refuses_what_it_cannot_train(request_: TrainRequest, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        task.EmbeddingPlugin().prepare(request_, TINY)


@pytest.mark.parametrize(("request_", "expected"), [
    (EvalRequest(), (identities.TEST_FIRST, task.EVAL_IDENTITIES, task.EVAL_PROBES)),
    (EvalRequest(data="identities", seed=5, count=20), (identities.TEST_FIRST + 5, 20, task.EVAL_PROBES)),
    (task.IdentityEvalRequest(count=4, probes=2), (identities.TEST_FIRST, 4, 2)),
])
def test_eval_request_seed_is_an_offset_into_the_test_identities(request_: EvalRequest,
                                                                 expected: tuple[int, int, int]) -> None:
    assert task.held_out_range(request_) == expected


@pytest.mark.parametrize("request_", [EvalRequest(count=0), EvalRequest(seed=-1), EvalRequest(data="digits"),
                                      task.IdentityEvalRequest(probes=0)])
def test_eval_requests_outside_the_test_identities_are_refused(request_: EvalRequest) -> None:
    with pytest.raises(ValueError):
        task.held_out_range(request_)


def test_the_plugin_is_registered_with_the_old_defaults() -> None:
    plugin = get_task("embedding")
    assert isinstance(plugin, task.EmbeddingPlugin) and plugin.config_cls is task.EmbeddingTrainConfig
    c = task.EmbeddingTrainConfig()
    assert (c.identities, c.views, c.epochs, c.batch_size, c.lr, c.weight_decay, c.scale, c.margin, c.max_minutes,
            c.threads, c.eval_identities, c.eval_probes) == (2000, 12, 14, 128, 3e-3, 5e-4, 30.0, 0.35, 13.0, 1,
                                                             300, 3)


def legacy_payload() -> dict[str, Any]:
    """A file as the old self-contained embedding pipeline wrote it (format 1, kind embedding)."""
    torch.manual_seed(0)
    spec = get_arch("embednet")
    config = {"identities": 40, "views": 4, "dimension": 16, "width": 8, "epochs": 1, "batch_size": 128, "lr": 3e-3,
              "weight_decay": 5e-4, "scale": 30.0, "margin": 0.35, "seed": 0, "max_cpu_minutes": 13.0, "threads": 1,
              "eval_identities": 4, "eval_probes": 2}
    model = spec.build(spec.make_config(TINY_ARCH)).eval()
    return {"format_version": 1, "kind": "embedding", "config": config, "state_dict": model.state_dict(),
            "history": [{"epoch": 1, "loss": 9.0, "seconds": 1.0, "cpu_seconds": 1.0, "lr": 0.0}],
            "summary": {"train_seconds": 1.0, "train_cpu_seconds": 1.0, "epochs_run": 1, "views": 160}}


def test_a_legacy_file_upgrades_to_what_the_plugin_reads(tmp_path: Path) -> None:
    torch.save(legacy_payload(), tmp_path / "old.pt")
    checkpoint = Checkpoint.load(tmp_path / "old.pt")
    plugin = task.EmbeddingPlugin()
    assert checkpoint.task == "embedding" and checkpoint.arch == "embednet" and checkpoint.labels == []
    assert checkpoint.data == {"name": "identities", "identities": 40, "views": 4}
    assert plugin.exportable(checkpoint)(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    assert plugin.eval_request_for(checkpoint) == task.IdentityEvalRequest(count=4, probes=2)
    assert "40 identities x 4 views" in plugin.training_data_text(checkpoint)
    spec = plugin.metadata_fields(checkpoint)["embedding"]
    assert spec.normalized and spec.threshold is not None and -1 <= spec.threshold <= 1


@pytest.mark.parametrize(("count", "trained", "expected"), [
    (0, 2, []),
    (5, 2, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]),  # every trained identity before a second view of any
])
def test_calibration_images_are_training_views(count: int, trained: int, expected: list[tuple[int, int]]) -> None:
    checkpoint = Checkpoint.from_payload(legacy_payload())
    checkpoint.data["identities"] = trained
    images = task.EmbeddingPlugin().calibration_images(checkpoint, count)
    want = [identities.view(identities.TRAIN_FIRST + i, v) for i, v in expected]
    assert [np.asarray(im).tolist() for im in images] == [np.asarray(im).tolist() for im in want]


@pytest.mark.parametrize("count", [0, 2])
def test_sample_images_are_test_identities_at_the_seed_view(count: int) -> None:
    checkpoint = Checkpoint.from_payload(legacy_payload())
    images = task.EmbeddingPlugin().sample_images(checkpoint, count, seed=2000)
    want = [identities.view(identities.TEST_FIRST + i, 2000) for i in range(count)]
    assert [np.asarray(im).tolist() for im in images] == [np.asarray(im).tolist() for im in want]


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, ExportResult, FitResult]:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("embedding")
    plugin = task.EmbeddingPlugin()
    request = TrainRequest(data="identities", arch="embednet", arch_options=TINY_ARCH)
    prepared = plugin.prepare(request, TINY)
    result = fit(prepared.job, TINY, folder / "run", progress=False)
    checkpoint = Checkpoint(task="embedding", arch=request.arch, arch_config=prepared.arch_config,
                            labels=prepared.labels, input_spec=prepared.input_spec, state_dict=result.best_state,
                            data=prepared.data, train_config=asdict(TINY),
                            summary={"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                                     "steps": result.steps, "stopped_by": result.stopped_by,
                                     "train_seconds": result.seconds, "threads": 1, **result.best_metrics},
                            history=result.history, extra=prepared.extra)
    checkpoint = Checkpoint.load(checkpoint.save(folder / "run" / "checkpoint.pt"))  # weights-only round trip
    export = export_checkpoint(checkpoint, folder / "tiny-embedder.onnx", evaluation=EvalRequest(count=20))
    return checkpoint, export, result


def test_training_logs_the_loss_and_validation_and_skips_the_head(
        exported: tuple[Checkpoint, ExportResult, FitResult]) -> None:
    checkpoint, _, result = exported
    assert result.epochs_run == 1 and result.steps == math.ceil(40 * 4 / 32)
    assert {"loss", "val_recall_at_1", "val_tar_at_far_1pct"} <= set(result.history[0])
    assert not any("weight" in key and value.shape[0] == 40 for key, value in checkpoint.state_dict.items())
    assert checkpoint.arch_config == TINY_ARCH and checkpoint.data["identities"] == 40


def test_the_exported_file_states_the_embedding_contract(exported: tuple[Checkpoint, ExportResult, FitResult]) -> None:
    _, export, _ = exported
    meta = read_metadata(export.path)
    assert meta == export.metadata
    assert meta.task is Task.EMBEDDING and meta.labels == []
    assert [(o.name, o.kind) for o in meta.outputs] == [("embedding", "embedding")]
    assert meta.embedding is not None and meta.embedding.normalized and meta.embedding.threshold is not None
    assert meta.golden is not None and len(meta.golden.samples) == 4 and len(meta.golden.samples[0].expected) == 16
    assert set(meta.metrics) == {"recall_at_1", "recall_at_5", "tar_at_far_1pct", "tar_at_threshold",
                                 "far_at_threshold", "heldout_identities"}
    assert meta.metrics["heldout_identities"] == 20.0 and export.parity["embedding"] <= 1e-4
    details = export.evaluation.details
    assert sum(details["genuine_score_histogram"]) == 20 * task.EVAL_PROBES
    assert sum(details["impostor_best_score_histogram"]) == 20 * task.EVAL_PROBES


def test_served_vectors_match_pytorch(exported: tuple[Checkpoint, ExportResult, FitResult]) -> None:
    checkpoint, export, _ = exported
    images = task.EmbeddingPlugin().sample_images(checkpoint, 5, seed=11)
    served = task.served_vectors(open_session(export.path), export.metadata, images)
    expected = task.torch_embedder(checkpoint.build_model(), checkpoint)(images)
    assert served.shape == (5, 16) and np.abs(served - expected).max() < 1e-4


def test_evaluate_measures_the_requested_held_out_identities(
        exported: tuple[Checkpoint, ExportResult, FitResult]) -> None:
    _, export, _ = exported
    evaluation = task.EmbeddingPlugin().evaluate(export.path, export.metadata, EvalRequest(seed=40, count=5))
    assert evaluation.metrics["heldout_identities"] == 5.0
    assert f"{identities.TEST_FIRST + 40}..{identities.TEST_FIRST + 44}" in evaluation.description
    assert 0.0 <= evaluation.metrics["recall_at_1"] <= evaluation.metrics["recall_at_5"] <= 1.0


def test_the_card_shows_the_retrieval_figures_and_threshold(
        exported: tuple[Checkpoint, ExportResult, FitResult], tmp_path: Path) -> None:
    checkpoint, export, _ = exported
    readme = write_card(tmp_path, checkpoint, export, CardContext(name="tiny-embedder", command="pytest"))
    text = readme.read_text()
    assert f"{export.metadata.metrics['recall_at_1']:.3f}" in text and "recall@1" in text and "CosFace" in text
    assert f"shipped threshold {export.metadata.embedding.threshold}" in text  # type: ignore[union-attr]
    assert (tmp_path / task.SCORES_PLOT).stat().st_size and (tmp_path / task.EXAMPLES_PLOT).stat().st_size


def test_init_continues_from_an_embedding_checkpoint_of_the_same_architecture(
        exported: tuple[Checkpoint, ExportResult, FitResult], tmp_path: Path) -> None:
    checkpoint, _, _ = exported
    path = checkpoint.save(tmp_path / "start.pt")
    request = TrainRequest(data="identities", arch="embednet", init=str(path))  # architecture from the file
    prepared = task.EmbeddingPlugin().prepare(request, replace(TINY, identities=4, views=1, val_identities=0))
    assert prepared.arch_config == TINY_ARCH and prepared.job.validate is None and prepared.job.monitor == ""
    state = prepared.job.model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in checkpoint.state_dict.items())


def test_init_refuses_another_tasks_checkpoint(tmp_path: Path) -> None:
    lenet = get_arch("lenet5")
    other = Checkpoint(task="classification", arch="lenet5", arch_config={}, labels=["0"],
                       input_spec=lenet.default_input, state_dict={}, data={})
    request = TrainRequest(data="identities", arch="embednet", init=str(other.save(tmp_path / "lenet.pt")))
    with pytest.raises(ValueError, match="classification lenet5"):
        task.EmbeddingPlugin().prepare(request, TINY)
