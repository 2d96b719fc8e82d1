"""Readers for the deployment files: a small Dockerfile parser, constraints, YAML, durations, dependency closure."""

from __future__ import annotations

import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent
VARIANTS = ("cpu", "gpu")
VARIANT_SERVICES = {"gpu": "stride-gpu", "cpu": "stride-cpu"}  # docker-compose.yml's service per variant
ORT_PACKAGE = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}

# The service's settings that only the deployment work adds (graceful drain, API keys, CORS), with their
# defaults as docs/deployment.md states them.
DEPLOYMENT_SETTINGS = {
    "STRIDE_DRAIN_DELAY_S": "5",
    "STRIDE_API_KEY": "",
    "STRIDE_METRICS_REQUIRE_KEY": "false",
    "STRIDE_CORS_ORIGINS": "",
}

# The metric names the Grafana dashboard may query (service/metrics.py and the throughput work).
METRICS = {
    "stride_requests_total",
    "stride_request_duration_seconds_bucket",
    "stride_inference_duration_seconds_bucket",
    "stride_errors_total",
    "stride_batch_size_bucket",
    "stride_queue_depth",
    "stride_inflight_requests",
    "stride_stage_duration_seconds_bucket",
    "stride_model_ready",
}


def settings_env_names() -> set[str]:
    return {f"STRIDE_{name.upper()}" for name in Settings.model_fields}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def duration_s(value: str | int | float) -> float:
    """'45s', '1m30s', '2m', 45 -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?", value.strip())
    assert parts and any(parts.groups()), f"not a duration: {value!r}"
    h, m, s, ms = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s + ms / 1000


# ------------------------------------------------------------------------------------------------ Dockerfile


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        text = self.value.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: expected one {keyword}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.value):
                key, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=value"
                values[key] = value
        return values

    def copies(self) -> list[tuple[dict[str, str], list[str], str]]:
        """(flags, sources, destination) of every COPY."""
        result = []
        for instruction in self.all("COPY"):
            words = shlex.split(instruction.value)
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            result.append((flags, paths[:-1], paths[-1]))
        return result

    def pip_installs(self) -> list[list[str]]:
        """The argument lists of every `pip install` in the stage's RUN instructions."""
        commands = []
        for instruction in self.all("RUN"):
            for command in re.split(r"&&|;", instruction.value):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                    commands.append(words)
        return commands


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]

    def stage(self, name: str) -> Stage:
        assert name in self.stages, f"Dockerfile has no stage {name!r} (has {sorted(self.stages)})"
        return self.stages[name]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with their continuation lines joined; comment lines inside them dropped, as Docker does."""
    lines, current, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((start, current + stripped))
        current = ""
    assert not current, "the Dockerfile ends inside a continuation line"
    return lines


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for number, line in logical_lines(path.read_text()):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = value.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stage = stages[name] = Stage(name=name, base=base)
        elif stage is None:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM"
            key, _, default = value.strip().partition("=")
            args[key] = default
        else:
            stage.instructions.append(Instruction(keyword, value.strip(), number))
    return Dockerfile(args=args, stages=stages)


def healthcheck_command(stage: Stage) -> list[str]:
    value = stage.one("HEALTHCHECK").value
    _, _, command = value.partition("CMD ")
    parsed = json.loads(command)
    assert isinstance(parsed, list), "HEALTHCHECK CMD must be in exec form"
    return parsed


# ------------------------------------------------------------------------------------------------ constraints


def read_constraints(variant: str) -> dict[str, str]:
    """constraints/<variant>.txt as {canonical name: version}; every line must be an exact pin."""
    pins: dict[str, str] = {}
    for number, raw in enumerate((REPO / "constraints" / f"{variant}.txt").read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"constraints/{variant}.txt:{number}: {raw!r} is not an exact `name==version` pin"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints/{variant}.txt:{number}: {name} pinned twice"
        pins[name] = match[2]
    return pins


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def marker_env(python: str, extra: str = "") -> dict[str, str]:
    """A Linux x86_64 CPython environment of the given version, as the images have."""
    return {
        "python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
        "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": extra,
    }


def applies(requirement: Requirement, python: str, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate(marker_env(python, extra)) for extra in extras | {""})


def dependency_closure(requirements: list[str], python: str, stand_ins: dict[str, str]) -> set[str]:
    """Every distribution `pip install` would bring for these requirements on Linux CPython `python`, read from
    the metadata of the distributions installed here. `stand_ins` maps a distribution that is not installed
    here to one whose dependency list is the same (checked by the caller)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        source = stand_ins.get(name, name)
        try:
            declared = metadata.distribution(source).requires or []
        except metadata.PackageNotFoundError as error:
            raise AssertionError(f"{source} is not installed here, so its dependencies are unknown") from error
        for text in declared:
            dependency = Requirement(text)
            if applies(dependency, python, set(requirement.extras)):
                todo.append(dependency)
    return names

