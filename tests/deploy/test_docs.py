"""docs/deployment.md says what the deployment files do: settings, CUDA pairing, commands, proxy limits, links."""

from __future__ import annotations

import re

from service.config import Settings
from tests.deploy.helpers import (
    DEPLOYMENT_SETTINGS,
    K8S,
    REPO,
    VARIANT_SERVICES,
    compose,
    duration_s,
    parse_dockerfile,
    read_constraints,
)
from tests.deploy.test_dockerfile import ORT_GPU_BUILDS

DOCS = REPO / "docs" / "deployment.md"


def docs() -> str:
    return DOCS.read_text()


def table_row(name: str) -> list[str]:
    rows = [line for line in docs().splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"docs/deployment.md has no table row for {name}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_deployment_settings_are_documented_with_their_defaults() -> None:
    for name, default in DEPLOYMENT_SETTINGS.items():
        cells = table_row(name)
        if default:
            assert cells[1].startswith(f"`{default}`"), f"{name}: documented default {cells[1]}, want {default}"
        else:
            assert cells[1].startswith("empty"), f"{name}: documented default {cells[1]}, want empty"
    text = docs()
    assert "X-API-Key" in text and "Authorization: Bearer" in text
    # The README's table has every service setting; this page points there.
    assert "../README.md#configuration" in text


def test_cuda_pairing_in_the_docs_is_the_one_the_dockerfile_uses() -> None:
    text = docs()
    version = read_constraints("gpu")["onnxruntime-gpu"]
    build = ORT_GPU_BUILDS[version]
    image = parse_dockerfile().args["CUDA_IMAGE"]
    row = table_row(f"onnxruntime-gpu {version}")
    assert row[1].startswith(f"CUDA {build['cuda'][0]}.{build['cuda'][1]}")
    assert row[2] == f"cuDNN {build['cudnn']}"
    assert row[3] == f"`{image}`"
    assert "CUDA-ExecutionProvider.html#requirements" in text


def test_compose_and_kubernetes_commands_name_real_profiles_and_folders() -> None:
    text = docs()
    for variant, service in VARIANT_SERVICES.items():
        assert f"docker compose --profile {variant} up" in text
        assert variant in compose()["services"][service]["profiles"]
        assert f"docker build --target {variant}" in text
    for folder in re.findall(r"kubectl apply -k (\S+)", text):
        assert (REPO / folder / "kustomization.yaml").exists(), folder
    assert {"base", "cpu"} <= {p.name for p in K8S.iterdir() if p.is_dir()}


def test_proxy_snippets_match_the_service_limits() -> None:
    text = docs()
    settings = Settings()
    sizes = re.findall(r"client_max_body_size (\d+)m;", text)
    assert sizes and all(int(s) * 1024 * 1024 == settings.max_body_bytes for s in sizes)
    assert re.search(rf"max_size {settings.max_body_bytes // (1024 * 1024)}MiB", text)
    for timeout in re.findall(r"(?:proxy_read_timeout|read_timeout|proxy-read-timeout:?) \"?(\d+s?)\"?", text):
        assert duration_s(timeout if timeout.endswith("s") else f"{timeout}s") > settings.request_timeout_s


def test_relative_links_resolve() -> None:
    for target in re.findall(r"\]\((\.\./[^)#\s]+|[\w./-]+\.md)(?:#[^)]*)?\)", docs()):
        assert (DOCS.parent / target).resolve().exists(), f"docs/deployment.md links to missing {target}"
