"""deploy/kubernetes: schema-valid for a current Kubernetes, strict, and consistent with the service and image."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import Settings
from tests.deploy.helpers import (
    DEPLOYMENT_SETTINGS,
    K8S,
    VARIANT_SERVICES,
    compose,
    duration_s,
    load_yaml,
    load_yaml_all,
    parse_dockerfile,
)

VERSION = kubernetes_validate.latest_version()


def validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, VERSION, strict=True)


def kustomization(folder: Path) -> dict[str, Any]:
    return load_yaml(folder / "kustomization.yaml")


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_kubernetes_version_is_a_current_one() -> None:
    major, minor, *_ = (int(x) for x in VERSION.split("."))
    assert (major, minor) >= (1, 34), f"kubernetes-validate only knows {VERSION}: upgrade it"


def test_every_manifest_validates_strictly_on_its_own() -> None:
    files = manifests()
    kinds = set()
    for path in files:
        for resource in load_yaml_all(path):
            validate(resource)
            kinds.add(resource["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = copy.deepcopy(resources(K8S / "base")["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def resources(folder: Path) -> dict[str, dict[str, Any]]:
    """A minimal kustomize: resources (files or folders), `images` new tags, and JSON6902 patches."""
    spec = kustomization(folder)
    found: dict[str, dict[str, Any]] = {}
    for entry in spec["resources"]:
        path = (folder / entry).resolve()
        if path.is_dir():
            found.update(copy.deepcopy(resources(path)))
        else:
            for resource in load_yaml_all(path):
                found[resource["kind"]] = resource
    for image in spec.get("images", []):
        for resource in found.values():
            for container in resource.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name = container["image"].split(":")[0]
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target = found[patch["target"]["kind"]]
        assert target["metadata"]["name"] == patch["target"]["name"]
        for operation in yaml.safe_load(patch["patch"]):
            apply_json_patch(target, operation)
    return found


def apply_json_patch(document: dict[str, Any], operation: dict[str, Any]) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if operation["op"] == "remove":
        assert key in node if isinstance(node, dict) else key < len(node), f"nothing at {operation['path']}"
        del node[key]
    elif operation["op"] in ("replace", "add"):
        if operation["op"] == "replace":
            assert key in node, f"nothing to replace at {operation['path']}"
        node[key] = operation["value"]
    else:
        raise AssertionError(f"unsupported patch op {operation['op']}")


def pod_spec(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return found["Deployment"]["spec"]["template"]["spec"]


def container(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(found)["containers"]
    return only


def env(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(found).get("env", [])}


@pytest.mark.parametrize("variant", ["base", "cpu"])
def test_each_kustomization_renders_to_valid_resources(variant: str) -> None:
    found = resources(K8S / variant)
    for resource in found.values():
        validate(resource)
    stages = parse_dockerfile().stages
    image = container(found)["image"]
    tag = image.rsplit(":", 1)[1]
    assert tag in stages, f"{variant}: image {image} has no Dockerfile target {tag}"
    limits = container(found)["resources"]["limits"]
    if variant == "base":
        assert tag == "gpu" and limits["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(found)["tolerations"])
    else:
        assert tag == "cpu" and "nvidia.com/gpu" not in limits and "tolerations" not in pod_spec(found)


def test_probes_hit_the_service_health_routes_on_its_port(app_paths: set[str]) -> None:
    found = resources(K8S / "base")
    main = container(found)
    ports = {p["name"]: p for p in main["ports"]}
    assert set(ports) == {"http", "grpc"}, "the container declares the HTTP port and the gRPC port, by name"
    defaults = Settings.model_construct()  # the declared defaults, whatever the environment says
    assert str(ports["http"]["containerPort"]) == env(found)["STRIDE_PORT"] == str(defaults.port)
    assert str(ports["grpc"]["containerPort"]) == env(found)["STRIDE_GRPC_PORT"] == str(defaults.grpc_port)
    assert env(found)["STRIDE_HOST"] == "0.0.0.0"
    port = ports["http"]
    probes = {"livenessProbe": "/health/live", "readinessProbe": "/health/ready"}
    for probe, path in probes.items():
        get = main[probe]["httpGet"]
        assert get["path"] == path and path in app_paths
        assert get["port"] in (port["name"], port["containerPort"])
    # Liveness never waits on model loading; readiness does (and turns 503 while draining).
    assert main["livenessProbe"]["failureThreshold"] * main["livenessProbe"]["periodSeconds"] >= 20
    assert main["resources"]["requests"]["cpu"] and main["resources"]["requests"]["memory"]
    assert main["resources"]["limits"]["memory"]


def test_termination_grace_outlasts_pre_stop_drain_and_the_slowest_request() -> None:
    found = resources(K8S / "base")
    values = env(found)
    drain = float(values.get("STRIDE_DRAIN_DELAY_S", DEPLOYMENT_SETTINGS["STRIDE_DRAIN_DELAY_S"]))
    timeout = float(values.get("STRIDE_REQUEST_TIMEOUT_S", Settings().request_timeout_s))
    pre_stop = container(found)["lifecycle"]["preStop"]
    sleep = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else 0
    grace = pod_spec(found)["terminationGracePeriodSeconds"]
    assert grace > sleep + drain + timeout, f"{grace} s grace < {sleep} + {drain} + {timeout} s"
    # The compose file gives the same budget.
    for name in VARIANT_SERVICES.values():
        assert duration_s(compose()["services"][name]["stop_grace_period"]) > drain + timeout


def test_pod_runs_as_the_image_user_without_privileges() -> None:
    found = resources(K8S / "base")
    uid = parse_dockerfile().stage("gpu").one("USER").value.split(":")[0]
    security = pod_spec(found)["securityContext"]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == uid
    main = container(found)["securityContext"]
    assert main["allowPrivilegeEscalation"] is False and main["capabilities"]["drop"] == ["ALL"]
    if main.get("readOnlyRootFilesystem"):
        assert any(m["mountPath"] == "/tmp" for m in container(found)["volumeMounts"])


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    found = resources(K8S / "base")
    deployment = found["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = found["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    # Every container port is reachable through the Service: HTTP (port 80) and gRPC (h2c).
    targets = {p["targetPort"]: p for p in service["spec"]["ports"]}
    assert set(targets) == {p["name"] for p in container(found)["ports"]} == {"http", "grpc"}
    assert targets["grpc"]["port"] == Settings.model_construct().grpc_port
    assert targets["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    hpa = found["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = found["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A node drain must be able to evict a pod even at the smallest scale.
    if "minAvailable" in pdb["spec"]:
        assert int(pdb["spec"]["minAvailable"]) < hpa["spec"]["minReplicas"]
    else:
        assert int(pdb["spec"]["maxUnavailable"]) >= 1


def test_models_come_from_the_image_unless_a_volume_is_mounted() -> None:
    found = resources(K8S / "base")
    models_dir = env(found)["STRIDE_MODELS_DIR"]
    assert models_dir == parse_dockerfile().stage("gpu").env()["STRIDE_MODELS_DIR"]
    # Nothing is mounted over the baked-in models by default (docs/deployment.md shows how to).
    mounts = [m["mountPath"] for m in container(found).get("volumeMounts", [])]
    assert not any(m == models_dir or m.startswith(f"{models_dir}/") for m in mounts)
