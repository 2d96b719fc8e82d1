"""Entry point for `python -m training` and the `stride-train` script.

The training package needs the `train` extra (torch, onnx, scikit-learn, ...), which the service's own
install leaves out; without it every command says how to install it instead of showing a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Top-level modules of the `train` extra (pyproject.toml) and ONNX Runtime, which export and evaluate run.
TRAINING_MODULES = frozenset(
    {"torch", "onnx", "onnxscript", "sklearn", "tqdm", "matplotlib", "pycocotools", "onnxruntime"}
)
INSTALL_HINT = (
    "python -m training needs the training extra, which is not installed ({module} is missing).\n"
    "Install it from the repository root with:\n"
    "    make install-dev\n"
    "or into your own environment:\n"
    "    pip install -e '.[cpu,train]'      ('.[gpu,train]' on a GPU machine)\n"
)


def missing_training_module(exc: ModuleNotFoundError) -> str | None:
    """The training-extra module whose absence raised exc, or None for any other missing module."""
    top = (exc.name or "").split(".")[0]
    return top if top in TRAINING_MODULES else None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from training.cli import main as run_command

        return run_command(argv)
    except ModuleNotFoundError as exc:  # commands import parts of the extra lazily too (onnx, pycocotools)
        module = missing_training_module(exc)
        if module is None:
            raise
        sys.stderr.write(INSTALL_HINT.format(module=module))
        return 2


if __name__ == "__main__":
    sys.exit(main())
