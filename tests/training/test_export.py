"""Export an untrained, seeded LeNet-5 and check the file as the service will use it."""

import base64
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from service.contract import from_metadata_props
from service.preprocess import prepare
from training.checkpoint import Checkpoint
from training.data import ImageSplits, load_dataset, render_batch
from training.export import PARITY_ATOL, ExportResult, export_checkpoint
from training.models import get_arch


@pytest.fixture(scope="module")
def splits() -> ImageSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def checkpoint(splits: ImageSplits) -> Checkpoint:
    torch.manual_seed(0)
    arch = get_arch("lenet5")
    config = arch.make_config()
    model = arch.build(config)
    return Checkpoint(
        arch="lenet5",
        arch_config=arch.config_to_dict(config),
        labels=splits.labels,
        input_spec=arch.default_input,
        state_dict=model.state_dict(),
        data={"name": "digits", "split_seed": splits.split_seed, "description": splits.description},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, checkpoint: Checkpoint, splits: ImageSplits) -> ExportResult:
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "lenet5.onnx", splits)


@pytest.fixture(scope="module")
def session(exported: ExportResult) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])


def test_file_is_self_contained_and_checker_clean(exported: ExportResult) -> None:
    assert list(exported.path.parent.iterdir()) == [exported.path]  # no external-data side files
    onnx.checker.check_model(str(exported.path), full_check=True)
    model = onnx.load(str(exported.path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert exported.file_bytes < 400_000


def test_input_and_output_names_and_dynamic_batch(session: ort.InferenceSession, splits: ImageSplits) -> None:
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and out.name == "logits"
    assert isinstance(inp.shape[0], str)  # symbolic batch dimension
    x = render_batch(splits.test.images[:7], get_arch("lenet5").default_input)
    for batch in (1, 7):
        assert session.run(None, {"images": x[:batch]})[0].shape == (batch, 10)


def test_parity_with_pytorch(
    exported: ExportResult, session: ort.InferenceSession, checkpoint: Checkpoint, splits: ImageSplits
) -> None:
    x = render_batch(splits.test.images[:32], checkpoint.input_spec)
    with torch.no_grad():
        expected = checkpoint.build_model()(torch.from_numpy(x)).numpy()
    got = session.run(None, {"images": x})[0]
    assert np.abs(got - expected).max() <= PARITY_ATOL
    assert exported.parity_max_abs_diff <= PARITY_ATOL


def test_metadata_round_trips_through_the_contract(exported: ExportResult, session: ort.InferenceSession) -> None:
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    assert meta == exported.metadata
    assert meta.task == "classification"
    assert meta.labels == [str(d) for d in range(10)]
    assert meta.input == get_arch("lenet5").default_input
    assert [(o.name, o.layout, o.kind) for o in meta.outputs] == [("logits", "batch,class", "logits")]
    assert meta.metrics["test_accuracy"] == exported.test.accuracy
    assert meta.metrics["test_samples"] == 270


def test_golden_samples_replay_like_the_service(session: ort.InferenceSession) -> None:
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    assert meta.golden is not None and len(meta.golden.samples) == 8
    for sample in meta.golden.samples:
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64)))
        assert image.format == "PNG" and image.size == (8, 8)  # the original image, as a user sends it
        x, _ = prepare(image.convert(meta.input.color_mode), meta.input)
        got = session.run(None, {"images": x[None]})[0].ravel()
        assert np.allclose(got, sample.expected, rtol=0, atol=meta.golden.atol)


def test_metrics_are_those_of_the_saved_file(
    exported: ExportResult, session: ort.InferenceSession, splits: ImageSplits
) -> None:
    x = render_batch(splits.test.images, get_arch("lenet5").default_input)
    predicted = session.run(None, {"images": x})[0].argmax(1)
    assert exported.metadata.metrics["test_accuracy"] == float(np.mean(predicted == splits.test.targets))


def test_checkpoint_round_trip(tmp_path: Path, checkpoint: Checkpoint) -> None:
    loaded = Checkpoint.load(checkpoint.save(tmp_path / "ck.pt"))
    assert loaded.arch == "lenet5" and loaded.input_spec == checkpoint.input_spec
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.build_model()(x), checkpoint.build_model()(x))
