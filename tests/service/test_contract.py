import json

import pytest

from service.contract import (
    CONTRACT_VERSION,
    ContractError,
    InputSpec,
    OutputSpec,
    ResizePolicy,
    from_metadata_props,
    to_metadata_props,
)
from tests.conftest import tiny_metadata


def test_round_trip_through_metadata_props() -> None:
    meta = tiny_metadata(metrics={"accuracy": 0.99})
    props = to_metadata_props(meta)
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props["task"]) == "classification"
    assert json.loads(props["labels"]) == ["dark", "mid", "bright"]
    assert from_metadata_props(props) == meta


def test_foreign_keys_are_ignored() -> None:
    props = to_metadata_props(tiny_metadata()) | {"producer_note": "not json at all"}
    assert from_metadata_props(props).task == "classification"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("task"), "no Stride metadata"),
        (lambda p: p.update(labels="[not json"), "'labels' is not valid JSON"),
        (lambda p: p.update(labels="[]"), "labels"),
        (lambda p: p.update(task='"captioning"'), "task"),
        (lambda p: p.update(contract_version=str(CONTRACT_VERSION + 1)), "newer than this service"),
        (lambda p: p.pop("input"), "input"),
    ],
)
def test_contract_violations_say_what_is_wrong(mutate, message: str) -> None:
    props = to_metadata_props(tiny_metadata())
    mutate(props)
    with pytest.raises(ContractError, match=message):
        from_metadata_props(props)


@pytest.mark.parametrize(
    ("channels", "mean", "std"),
    [(3, (0.5,), (0.5,)), (1, (0.5, 0.5), (0.5,)), (1, (0.5,), (0.0,))],
)
def test_input_spec_rejects_inconsistent_normalisation(channels: int, mean: tuple, std: tuple) -> None:
    with pytest.raises(ValueError):
        InputSpec(height=8, width=8, channels=channels, resize=ResizePolicy.STRETCH, mean=mean, std=std)


def test_colour_mode_follows_channels() -> None:
    grey = InputSpec(height=4, width=4, channels=1, resize="stretch", mean=(0,), std=(1,))
    rgb = InputSpec(height=4, width=4, channels=3, resize="letterbox", mean=(0, 0, 0), std=(1, 1, 1))
    assert (grey.color_mode, rgb.color_mode) == ("L", "RGB")


@pytest.mark.parametrize(
    ("task", "outputs", "sections", "message"),
    [
        ("detection", ["logits"], {}, "needs outputs of kind"),
        ("detection", ["boxes", "scores"], {}, "'detection' section"),
        ("instance_segmentation", ["boxes", "scores", "mask_coefficients", "mask_prototypes"],
         {"detection": {"strides": [8]}}, "'masks' section"),
        ("keypoints", ["boxes", "scores", "keypoints"], {"detection": {"strides": [8]}}, "'keypoints' section"),
        ("classification", ["boxes"], {}, "'logits' or 'probabilities'"),
    ],
)
def test_task_specific_outputs_and_sections_are_required(task, outputs, sections, message) -> None:
    specs = [OutputSpec(name=kind, layout="batch,x", kind=kind) for kind in outputs]
    with pytest.raises(ValueError, match=message):
        tiny_metadata(task=task, outputs=specs, **sections)


def test_a_complete_keypoint_contract_is_accepted_and_finds_its_outputs() -> None:
    specs = [OutputSpec(name=kind, layout="batch,x", kind=kind) for kind in ("boxes", "scores", "keypoints")]
    meta = tiny_metadata(task="keypoints", outputs=specs, detection={"strides": [8, 16]},
                         keypoints={"names": ["head", "neck"], "skeleton": [(0, 1)]})
    assert meta.output("keypoints") == 2
    assert from_metadata_props(to_metadata_props(meta)) == meta
    with pytest.raises(ContractError, match="mask_prototypes"):
        meta.output("mask_prototypes")
