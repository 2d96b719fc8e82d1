"""`python -m service inspect FILE.onnx`: how Stride reads a model file, and what to write when it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import yaml

from service.config import Settings
from service.contract import ContractError
from service.families import recognise, sidecar_path
from service.families.described import template_for
from service.runtime import ModelSession, open_session

TEMPLATE_HEADER = """\
# Description of {file} for Stride (docs/bring-your-own-model.md). Guessed from the graph's shapes:
# check every value against how the model was trained (task, labels, resize, mean/std, output kinds),
# then restart Stride or reload the models. Fields: docs/model-contract.md.
"""


def inspect_file(path: Path, *, write: bool, out: TextIO) -> int:
    """Print the report; 0 when the file can be served as it is, 1 when it needs a description, 2 when
    it is not a model ONNX Runtime can open."""
    if not path.is_file():
        print(f"error: {path} is not a file", file=out)
        return 2
    try:
        session = open_session(path, Settings(providers=["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        print(f"error: ONNX Runtime cannot open {path.name}: {exc}", file=out)
        return 2
    _print_graph(session, out)
    try:
        model = recognise(path, session)
    except ContractError as exc:
        print(f"\nfamily: none recognised\nproblem: {exc}", file=out)
        _offer_template(path, session, write=write, out=out)
        return 1
    print(f"\nfamily: {model.family} (contract from {model.source})", file=out)
    contract = model.metadata.model_dump(mode="json", exclude_none=True, exclude={"golden"})
    print("contract the service applies:", file=out)
    print(_indent(yaml.safe_dump(contract, sort_keys=False, width=100, default_flow_style=None)), file=out, end="")
    if model.metadata.golden is not None:
        print(f"  golden: {len(model.metadata.golden.samples)} samples, replayed at load", file=out)
    return 0


def _print_graph(session: ModelSession, out: TextIO) -> None:
    print("inputs:", file=out)
    for tensor in session.session.get_inputs():
        print(f"  {tensor.name}: {tensor.type} {_shape(tensor.shape)}", file=out)
    print("outputs:", file=out)
    for tensor in session.session.get_outputs():
        print(f"  {tensor.name}: {tensor.type} {_shape(tensor.shape)}", file=out)
    if session.custom_metadata:
        print("metadata_props keys: " + ", ".join(sorted(session.custom_metadata)), file=out)


def _offer_template(path: Path, session: ModelSession, *, write: bool, out: TextIO) -> None:
    template = yaml.safe_dump(template_for(path, session), sort_keys=False, default_flow_style=None, width=100)
    text = TEMPLATE_HEADER.format(file=path.name) + template
    target = sidecar_path(path)
    if write and target.exists():
        print(f"\n{target.name} exists already; not overwritten. Template:\n{text}", file=out)
    elif write:
        target.write_text(text, encoding="utf-8")
        print(f"\nwrote {target}: complete it, then restart Stride (or reload the models)", file=out)
    else:
        print(f"\ntemplate for {target.name} (write it with --write):\n{text}", file=out)


def _shape(shape: list[object]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else f"{d or '?'} (dynamic)" for d in shape) + "]"


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())
