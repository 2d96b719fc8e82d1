"""The cpu image's install step, run for real: the Dockerfile's own `pip install` line, in a fresh venv."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.deploy.helpers import REPO, parse_dockerfile, read_constraints

TIMEOUT_S = 300


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{shlex.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_cpu_install_step_of_the_dockerfile_installs_exactly_the_pins_and_the_service_imports(tmp_path: Path) -> None:
    build = parse_dockerfile().stage("cpu-build")
    # The build context as the stage sees it: what its COPY lines bring, where they put it (under WORKDIR).
    workdir = build.one("WORKDIR").value
    context = tmp_path / "context"
    context.mkdir()
    for flags, sources, dest in build.copies():
        assert "from" not in flags
        target = context / dest if dest not in ("./", ".") else context
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, context / dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / Path(source).name)
    assert workdir == "/src"

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    (command,) = build.pip_installs()
    assert command[0] == "pip", command
    # The Dockerfile's command, word for word, with the venv's pip for `pip`.
    run(python, "-m", *command, cwd=context)

    # The service imports from the installed package (not from a source tree) with only these packages.
    code = "import service, service.app, service.__main__; print(service.__file__)"
    location = run(python, "-c", code, cwd=tmp_path).strip()
    assert Path(location).is_relative_to(venv), location

    # Everything installed is pinned, and everything pinned is installed: the constraints are the image.
    frozen = run(python, "-m", "pip", "freeze", "--exclude", "stride", cwd=tmp_path).split()
    installed = {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in frozen}
    assert installed == read_constraints("cpu")
