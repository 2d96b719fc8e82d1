"""The project's promises about itself: dependencies, the torch-free service, documented settings, CI."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from service.config import Settings

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_runtime_dependencies_are_exactly_the_agreed_ones() -> None:
    project = pyproject()["project"]
    assert names(project["dependencies"]) == {
        "fastapi", "uvicorn", "pydantic", "pydantic-settings", "python-multipart", "pillow", "numpy",
        "prometheus-client", "grpcio", "protobuf",
        "fastapi-offline",  # /docs offline with Swagger UI 5 (issue 16)
        "opencv-python-headless",  # cv2.resize: Ultralytics exports' interpolation (issue 10)
        "pyyaml",  # model descriptions beside the files (issue 10)
        "qdrant-client",  # /v1/collections: embedded store, or a Qdrant server (issue 15)
    }
    extras = project["optional-dependencies"]
    assert names(extras["cpu"]) == {"onnxruntime"}
    assert names(extras["gpu"]) == {"onnxruntime-gpu"}
    assert "torch==2.13.0" in extras["train"]
    assert not any(name.startswith("torch") for name in names(project["dependencies"]))
    assert "torchvision" not in names(extras["train"])


def test_service_never_imports_torch_or_training() -> None:
    code = (
        "import sys, service.app, service.__main__\n"
        "service.app.create_app()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'onnx', 'sklearn'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_setting_is_documented_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text()
    for field in Settings.model_fields:
        assert f"| `STRIDE_{field.upper()}` |" in readme, f"STRIDE_{field.upper()} missing from README"


def test_ci_runs_exactly_make_test_and_the_readme_shows_both_commands() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)
    readme = (REPO / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    for target in ("serve", "test", "models", "lint"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE)
