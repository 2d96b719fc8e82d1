"""deploy/kserve: InferenceServices valid against KServe's own CRD schema (committed, so offline), strict,
and consistent with the service: its ports, its open health routes, the GPU and the drain budget."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.config import Settings
from tests.deploy.helpers import REPO, load_yaml_all

KSERVE = REPO / "deploy" / "kserve"
SCHEMA = KSERVE / "crd" / "inferenceservice-v1beta1.schema.json"
MANIFESTS = sorted(KSERVE.glob("*.yaml"))


def strict(schema: Any) -> Any:
    """Unknown fields fail, as in `kubectl apply --validate=strict` (a structural schema would prune them)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        tightened["additionalProperties"] = False
    return tightened


@cache
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))


def errors_of(resource: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(resource)]


def resource(path: Path) -> dict[str, Any]:
    (only,) = load_yaml_all(path)
    return only


def container(isvc: dict[str, Any]) -> dict[str, Any]:
    (only,) = isvc["spec"]["predictor"]["containers"]
    return only


def env(isvc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(isvc)["env"]}


def test_there_are_rest_grpc_and_raw_variants() -> None:
    assert [p.name for p in MANIFESTS] == ["inferenceservice-grpc.yaml", "inferenceservice-raw.yaml",
                                           "inferenceservice-rest.yaml"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_each_manifest_is_a_valid_inference_service(path: Path) -> None:
    isvc = resource(path)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert errors_of(isvc) == []


# (what is wrong, how to break a valid manifest)
BREAKAGES = [
    ("unknown predictor field", lambda r: r["spec"]["predictor"].update(gpus=1)),
    ("unknown container field", lambda r: container(r).update(gpu=1)),
    ("port as text", lambda r: container(r)["ports"][0].update(containerPort="8000")),
    ("no containers key but a typo", lambda r: r["spec"]["predictor"].update(containerz=[])),
    ("probe period as text", lambda r: container(r)["readinessProbe"].update(periodSeconds="5")),
]


@pytest.mark.parametrize(("wrong", "breaking"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_strict_validation_catches_mistakes(wrong: str, breaking: Any) -> None:
    isvc = copy.deepcopy(resource(KSERVE / "inferenceservice-raw.yaml"))
    breaking(isvc)
    assert errors_of(isvc), f"{wrong} passed validation"


@pytest.mark.parametrize(
    ("name", "mode", "ports"),
    [
        ("inferenceservice-rest.yaml", "Serverless", {"http1": 8000}),
        ("inferenceservice-grpc.yaml", "Serverless", {"h2c": 8001}),  # Knative's name for gRPC (HTTP/2)
        ("inferenceservice-raw.yaml", "RawDeployment", {"http1": 8000, "grpc": 8001}),
    ],
)
def test_ports_match_the_service_settings(name: str, mode: str, ports: dict[str, int]) -> None:
    isvc = resource(KSERVE / name)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == mode
    assert {p["name"]: p["containerPort"] for p in container(isvc)["ports"]} == ports
    values = env(isvc)
    assert values["STRIDE_HOST"] == "0.0.0.0" and values["STRIDE_PORT"] == "8000"
    grpc_port = int(values["STRIDE_GRPC_PORT"])
    assert grpc_port == ports.get("h2c", ports.get("grpc", 0)), "the gRPC port is on exactly when it is routed"
    assert set(values) <= {f"STRIDE_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_probes_gpu_and_drain(path: Path, app_paths: set[str]) -> None:
    isvc = resource(path)
    main = container(isvc)
    for probe, route in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        assert main[probe]["httpGet"] == {"path": route, "port": 8000} and route in app_paths
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    values = env(isvc)
    predictor = isvc["spec"]["predictor"]
    budget = float(values["STRIDE_DRAIN_DELAY_S"]) + float(values["STRIDE_REQUEST_TIMEOUT_S"])
    assert predictor["terminationGracePeriodSeconds"] > budget
    assert predictor["timeout"] > float(values["STRIDE_REQUEST_TIMEOUT_S"])  # Stride's 504 comes first
