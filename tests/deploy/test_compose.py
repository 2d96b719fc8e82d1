"""docker-compose.yml against the Compose Specification, and Prometheus and Grafana against the service."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from tests.deploy.helpers import (
    BIN,
    COMPOSE,
    DEPLOYMENT_SETTINGS,
    METRICS,
    REPO,
    VARIANT_SERVICES,
    compose,
    duration_s,
    load_yaml,
    parse_dockerfile,
    settings_env_names,
)

PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "stride.json"


def compose_files() -> list[Path]:
    return sorted({*REPO.glob("docker-compose*.yml"), *REPO.glob("docker-compose*.yaml"), *REPO.glob("compose*.y*ml")})


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    tool = BIN / "check-jsonschema"
    assert tool.exists(), f"{tool} missing: install the dev extra (check-jsonschema)"
    return subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def test_every_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    files = compose_files()
    assert COMPOSE in files
    result = check_jsonschema(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check really checks: a service with an unknown key fails it.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("  stride-cpu:\n", "  stride-cpu:\n    gpus_please: 1\n", 1))
    assert check_jsonschema(broken).returncode != 0


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` and `${VAR}` with nothing set: the defaults."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m[1] or "", str(value))


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return {k: (v if sep else None) for k, sep, v in (item.partition("=") for item in env)}
    return dict(env)


def container_port(mapping: str) -> str:
    return interpolate(mapping).rsplit(":", 1)[-1].split("/")[0]


def volumes(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume, defaults interpolated."""
    result = []
    for volume in service.get("volumes", []):
        parts = interpolate(volume).split(":")
        result.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return result


def test_gpu_and_cpu_variants_are_the_same_service_but_for_the_image_and_the_gpu() -> None:
    services = compose()["services"]
    stages = parse_dockerfile().stages
    gpu, cpu = services[VARIANT_SERVICES["gpu"]], services[VARIANT_SERVICES["cpu"]]
    for variant, name in VARIANT_SERVICES.items():
        service = services[name]
        assert service["profiles"] == [variant]
        assert service["build"]["target"] == variant and variant in stages
        assert service["build"].get("context", ".") == "."
        assert service["image"].endswith(f":{variant}")
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert devices[0].get("count") in (1, "all") or devices[0].get("device_ids")
    assert "deploy" not in cpu or not cpu["deploy"].get("resources", {}).get("reservations", {}).get("devices")
    differing = {"profiles", "image", "build", "deploy"}
    assert {k: v for k, v in gpu.items() if k not in differing} == {k: v for k, v in cpu.items() if k not in differing}
    # Monitoring comes up with either profile.
    for name in ("prometheus", "grafana"):
        assert "profiles" not in services[name]


def test_stride_service_restarts_checks_health_drains_and_mounts_models(app_paths: set[str]) -> None:
    service = compose()["services"][VARIANT_SERVICES["gpu"]]
    env = environment(service)
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    assert env["STRIDE_HOST"] == "0.0.0.0"
    port = env["STRIDE_PORT"]
    # HTTP and gRPC, fixed at the settings' defaults (the image's too) and both published.
    defaults = Settings.model_construct()  # the declared defaults, whatever the environment says
    assert (port, env["STRIDE_GRPC_PORT"]) == (str(defaults.port), str(defaults.grpc_port))
    assert [container_port(p) for p in service["ports"]] == [port, env["STRIDE_GRPC_PORT"]]
    image = parse_dockerfile().stage("gpu").env()
    assert (image["STRIDE_PORT"], image["STRIDE_GRPC_PORT"]) == (port, env["STRIDE_GRPC_PORT"])
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", " ".join(test))
    assert urls == [(port, "/health/ready")] and "/health/ready" in app_paths
    assert duration_s(service["healthcheck"]["start_period"]) >= 30
    # SIGTERM starts the drain; Docker's SIGKILL must come after the drain and the slowest request.
    drain = float(DEPLOYMENT_SETTINGS["STRIDE_DRAIN_DELAY_S"])
    assert duration_s(service["stop_grace_period"]) > drain + Settings().request_timeout_s
    models = [m for m in volumes(service) if m[1] == env["STRIDE_MODELS_DIR"]]
    assert models and models[0][2] == "ro", "the models directory is mounted read-only"
    assert (REPO / models[0][0]).resolve() == (REPO / "models").resolve()


def test_every_setting_can_be_given_through_the_environment() -> None:
    env = environment(compose()["services"][VARIANT_SERVICES["gpu"]])
    wanted = settings_env_names() | set(DEPLOYMENT_SETTINGS)
    missing = sorted(wanted - set(env))
    assert not missing, f"docker-compose.yml does not pass {missing} through to the service"
    unknown = sorted(k for k in env if k.startswith("STRIDE_") and k not in wanted)
    assert not unknown, f"docker-compose.yml sets {unknown}, which the service does not read"


def test_bind_mounts_point_at_files_in_the_repository() -> None:
    for name, service in compose()["services"].items():
        for source, _, _ in volumes(service):
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def mount_target(service: dict[str, Any], source: str) -> str:
    for mounted, target, _ in volumes(service):
        if mounted == source:
            return target
    raise AssertionError(f"{source} is not mounted")


def test_prometheus_scrapes_the_metrics_route_of_the_stride_service(app_paths: set[str]) -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_path = mount_target(prometheus, "./deploy/prometheus/prometheus.yml")
    assert f"--config.file={config_path}" in prometheus["command"]
    config = load_yaml(PROMETHEUS)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "stride"]
    assert job.get("metrics_path", "/metrics") in app_paths
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    for variant in VARIANT_SERVICES.values():
        service = services[variant]
        aliases = service["networks"]["default"]["aliases"]
        port = environment(service)["STRIDE_PORT"]
        assert targets == [f"{aliases[0]}:{port}"]
    assert duration_s(config["global"]["scrape_timeout"]) <= duration_s(config["global"]["scrape_interval"])


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    provisioning = mount_target(grafana, "./deploy/grafana/provisioning")
    dashboards_dir = mount_target(grafana, "./deploy/grafana/dashboards")
    assert provisioning == "/etc/grafana/provisioning"
    (datasource,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    prometheus_port = container_port(services["prometheus"]["ports"][0])
    assert datasource["type"] == "prometheus" and datasource["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "stride.yml")["providers"]
    assert provider["options"]["path"] == dashboards_dir
    assert DASHBOARD.exists()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


# ---------------------------------------------------------------------------------------------- dashboard

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels, keywords and Grafana variables left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match[0].lower() in PROMQL_WORDS:
            continue
        names.add(match[0])
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", []) if "expr" in t]


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (model) (rate(stride_requests_total{model=~"$model", route!~"/health/.*"}[$__rate_interval]))',
     {"stride_requests_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(foo_bucket[5m]))) / on(job) group_left up", {"foo_bucket", "up"}),
])
def test_metric_names_reads_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_dashboard_queries_only_metrics_the_service_exports() -> None:
    board = dashboard()
    exprs = queries(board)
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names and names <= METRICS, f"{expr}: {sorted(names - METRICS)} are not Stride metrics"
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            (metric,) = re.findall(r"label_values\((\w+),", query)
            assert metric in METRICS


def test_dashboard_shows_throughput_latency_errors_batching_and_queueing_per_model() -> None:
    board = dashboard()
    exprs = queries(board)
    used = set().union(*(metric_names(e) for e in exprs))
    assert used == METRICS, f"no panel for {sorted(METRICS - used)}"

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert has(r"rate\(stride_requests_total")
    for quantile in ("0.5", "0.99"):
        assert has(rf"histogram_quantile\({quantile}, sum by \(model, le\) \(rate\(stride_request_duration_seconds")
        assert has(rf"histogram_quantile\({quantile}, sum by \(model, le\) \(rate\(stride_batch_size_bucket")
    assert has(r"rate\(stride_errors_total") and has(r'status=~"5\.\."')
    assert has(r"stride_queue_depth") and has(r"stride_inflight_requests")
    # Per model: every query filters on the model variable, except errors by code (that metric has no model).
    for expr in exprs:
        assert '$model"' in expr or metric_names(expr) == {"stride_errors_total"}, expr
    names = [v["name"] for v in board["templating"]["list"]]
    assert "model" in names
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
