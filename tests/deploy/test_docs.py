"""docs/deployment.md says what the deployment files do; and every example in README.md and docs/*.md runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


def test_both_ports_are_documented_as_the_deployment_files_set_them() -> None:
    defaults = Settings.model_construct()  # the declared defaults, whatever the environment says
    assert table_row("STRIDE_GRPC_PORT")[1] == f"`{defaults.grpc_port}`"
    publish = compose()["services"][VARIANT_SERVICES["cpu"]]["ports"]
    for name, port in (("STRIDE_PUBLISH", defaults.port), ("STRIDE_GRPC_PUBLISH", defaults.grpc_port)):
        assert any(mapping.startswith(f"${{{name}:-{port}}}:") for mapping in publish), name
        assert table_row(name)[1] == f"`{port}`"
    image = parse_dockerfile().stage("cpu").env()
    assert f"`STRIDE_GRPC_PORT={image['STRIDE_GRPC_PORT']}`" in docs() and "`grpc`" in docs()


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


# ------------------------------------------------------------------------------ examples against a real server
#
# The rule: every `curl` command in a fenced code block of README.md and docs/*.md, and every ```python block
# that talks to the service (it names 127.0.0.1:8000 or :8001), runs against a real `python -m service`
# serving a copy of models/, and must exit 0 (curl: with an HTTP 2xx). The only exceptions are blocks right
# after a `<!-- not run: REASON -->` comment (placeholder files such as your own model or photo); there are
# at most MAX_NOT_RUN of them. Where the docs print the answer (a ```json block right after a one-command
# curl block, or `# ...` comments on a print line) its key parts are checked too.

EXAMPLE_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S[^>]*?)\s*-->")
MAX_NOT_RUN = 3
DOC_HTTP = re.compile(r"(?:https?://)?(?:127\.0\.0\.1|localhost):8000\b")
DOC_GRPC = re.compile(r"\b127\.0\.0\.1:8001\b")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass
class Block:
    path: str
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    not_run: str | None  # the reason given in a `<!-- not run: ... -->` right above the fence


def fenced_blocks(text: str, path: str = "") -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang, start = opening[1], opening[2], i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = NOT_RUN.search(previous)
        blocks.append(Block(path, start + 1, lang, "\n".join(body), marker[1] if marker else None))
        i += 1
    return blocks


def curl_commands(body: str) -> list[list[str]]:
    """The curl commands of a shell block, continuation lines joined, as argument lists (comments dropped)."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["curl"]:
            commands.append(words)
    return commands


def doc_number_matches(doc: str, actual: float) -> bool:
    """A number as the docs print it (rounded) against the real one: equal to the docs' last digit, or within
    1e-5 (another CPU's ONNX Runtime may differ in the last float digits)."""
    decimals = len(doc.partition(".")[2])
    return abs(float(doc) - actual) <= max(0.6 * 10 ** -decimals, 1e-5)


def contains(answer: Any, documented: Any, where: str = "") -> list[str]:
    """What the documented JSON says that the answer does not: keys, strings, list lengths, numbers to the
    printed precision. `"..."` values and the per-request `request_id` are not compared."""
    if documented == "..." or where.endswith(".request_id"):
        return []
    if isinstance(documented, dict):
        if not isinstance(answer, dict):
            return [f"{where}: {answer!r} is not an object"]
        return [problem for key, value in documented.items() if key != "..."
                for problem in ([f"{where}.{key}: missing"] if key not in answer
                                else contains(answer[key], value, f"{where}.{key}"))]
    if isinstance(documented, list):
        if not isinstance(answer, list) or len(answer) != len(documented):
            return [f"{where}: {answer!r} is not a list of {len(documented)}"]
        pairs = enumerate(zip(answer, documented, strict=True))
        return [problem for n, (a, d) in pairs for problem in contains(a, d, f"{where}[{n}]")]
    if isinstance(documented, float | int) and not isinstance(documented, bool):
        ok = isinstance(answer, float | int) and doc_number_matches(repr(documented), answer)
        return [] if ok else [f"{where}: {answer!r}, documented {documented!r}"]
    return [] if answer == documented else [f"{where}: {answer!r}, documented {documented!r}"]


TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[A-Za-z_]+")


def printed_like(documented: str, actual: str) -> bool:
    """An output line as a `# ...` comment shows it: the same words and numbers, numbers to its precision."""
    doc_tokens, real_tokens = TOKEN.findall(documented), TOKEN.findall(actual)
    if not doc_tokens or len(doc_tokens) != len(real_tokens):
        return False
    for doc, real in zip(doc_tokens, real_tokens, strict=True):
        if re.fullmatch(r"-?\d+(?:\.\d+)?", doc):
            if not (re.fullmatch(r"-?\d+(?:\.\d+)?", real) and doc_number_matches(doc, float(real))):
                return False
        elif doc != real:
            return False
    return True


def documented_output(body: str) -> list[str]:
    """The `# ...` comments that show what a print line prints: on the line, and on comment lines after it.
    A trailing `<- note` is the docs' remark, not output."""
    shown, after_print = [], False
    for line in body.splitlines():
        code, _, comment = line.partition("#")
        if code.strip():
            after_print = code.strip().startswith("print(")
        if after_print and comment.strip():
            shown.append(comment.split("<-")[0].strip())
    return shown


def missing_output(shown: list[str], output: str) -> list[str]:
    """The documented lines the output lacks, matched in order."""
    lines, position, missing = output.splitlines(), 0, []
    for expected in shown:
        found = next((n for n in range(position, len(lines)) if printed_like(expected, lines[n])), None)
        if found is None:
            missing.append(expected)
        else:
            position = found + 1
    return missing


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    ("no fences here\n", []),
    ("```sh\ncurl -s x\n```\n", [("sh", "curl -s x", None)]),
    ("<!-- not run: your own photo -->\n```bash\ncurl x\n```\n", [("bash", "curl x", "your own photo")]),
    ("- item\n\n  ```python\n  print(1)\n  ```\n", [("python", "print(1)", None)]),
])
def test_fenced_blocks_finds_blocks_their_language_and_the_not_run_marker(text, expected) -> None:
    assert [(b.lang, b.body, b.not_run) for b in fenced_blocks(text)] == expected


@pytest.mark.parametrize(("body", "expected"), [
    ("", []),
    ("make serve\n", []),
    ("curl -s http://a/b   # note\n", [["curl", "-s", "http://a/b"]]),
    ("curl -s --data-binary @x \\\n  'http://a/b?c=1&d=2'\nls\n", [["curl", "-s", "--data-binary", "@x", "http://a/b?c=1&d=2"]]),
])
def test_curl_commands_joins_continuations_and_drops_comments(body, expected) -> None:
    assert curl_commands(body) == expected


@pytest.mark.parametrize(("answer", "documented", "problems"), [
    ({}, {}, 0),
    ({"a": 0.928181, "request_id": "x"}, {"a": 0.928182, "request_id": "y"}, 0),
    ({"a": 0.93}, {"a": 0.928182}, 1),
    ({"a": [1, 2]}, {"a": [1]}, 1),
    ({"a": "7"}, {"a": "1"}, 1),
    ({"b": 1}, {"a": "...", "...": "..."}, 1),
])
def test_contains_compares_what_the_docs_show(answer, documented, problems) -> None:
    assert len(contains(answer, documented)) == problems


@pytest.mark.parametrize(("shown", "output", "missing"), [
    ([], "", []),
    ([], "anything\n", []),
    (["circle 0.99 {'x1': 135.9}"], "circle 0.99 {'x1': 135.90935707092285}\n", []),
    (["circle 0.99 {'x1': 135.9}"], "circle 0.99 {'x1': 136.2}\n", ["circle 0.99 {'x1': 135.9}"]),
    (["(4, 10)", "a 1"], "x\n(4, 10)\na 1\n", []),
    (["a 1", "(4, 10)"], "(4, 10)\na 1\n", ["(4, 10)"]),
])
def test_missing_output_matches_documented_lines_in_order(shown, output, missing) -> None:
    assert missing_output(shown, output) == missing


def all_blocks() -> list[Block]:
    return [b for path in EXAMPLE_DOCS for b in fenced_blocks(path.read_text(), str(path.relative_to(REPO)))]


def curl_cases() -> list[Any]:
    cases = []
    blocks = all_blocks()
    for n, block in enumerate(blocks):
        commands = curl_commands(block.body) if block.lang in ("sh", "bash", "shell", "") else []
        if block.not_run or not commands:
            continue
        following = blocks[n + 1] if n + 1 < len(blocks) and blocks[n + 1].path == block.path else None
        lines_between = [] if following is None else block_gap(block, following)
        answer = (following.body if following and following.lang == "json" and len(commands) == 1
                  and not any(lines_between) else None)
        for number, command in enumerate(commands):
            cases.append(pytest.param(command, answer, id=f"{block.path}:{block.line}:{number}"))
    return cases


def block_gap(block: Block, following: Block) -> list[str]:
    """The non-blank lines between two blocks of one file."""
    lines = (REPO / block.path).read_text().splitlines()
    end = block.line + block.body.count("\n") + 1  # the closing fence's index (0-based)
    return [line for line in lines[end + 1:following.line - 1] if line.strip()]


def python_cases() -> list[Any]:
    return [pytest.param(b, id=f"{b.path}:{b.line}") for b in all_blocks()
            if b.lang == "python" and not b.not_run and (DOC_HTTP.search(b.body) or DOC_GRPC.search(b.body))]


def test_examples_are_found_and_the_exceptions_are_few_and_explained() -> None:
    blocks = all_blocks()
    skipped = [b for b in blocks if b.not_run]
    assert len(skipped) <= MAX_NOT_RUN, [f"{b.path}:{b.line}" for b in skipped]
    for block in skipped:
        where = f"{block.path}:{block.line}"
        assert curl_commands(block.body) or block.lang == "python", f"{where}: marker on a block with nothing to run"
    # The marker sits right above a fence; anywhere else it would exempt nothing.
    for path in EXAMPLE_DOCS:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if NOT_RUN.search(line):
                following = next((x for x in lines[number + 1:] if x.strip()), "")
                assert FENCE.match(following), f"{path.name}:{number + 1}: a not-run marker with no code block below"
    ids = [case.id for case in curl_cases()]
    assert any(i.startswith("README.md:") for i in ids) and any(i.startswith("docs/api.md:") for i in ids)
    assert len(python_cases()) >= 2


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """`python -m service` on free ports serving a copy of models/; and a folder to run the examples from,
    where `docs/` is the repository's (so `@docs/samples/...` works) and files the examples write land."""
    root = tmp_path_factory.mktemp("docs-examples")
    models = root / "models"
    models.mkdir()
    for source in (*(REPO / "models").glob("*.onnx"), *(REPO / "models").glob("*.yaml")):
        shutil.copy2(source, models / source.name)
    workdir = root / "work"
    workdir.mkdir()
    (workdir / "docs").symlink_to(REPO / "docs")
    port, grpc_port = free_port(), free_port()
    env = os.environ | {"STRIDE_HOST": "127.0.0.1", "STRIDE_PORT": str(port), "STRIDE_GRPC_PORT": str(grpc_port),
                        "STRIDE_MODELS_DIR": str(models), "STRIDE_WORKERS": "1", "STRIDE_DRAIN_DELAY_S": "0",
                        "STRIDE_COLLECTIONS_DIR": str(root / "collections")}
    for name in ("STRIDE_API_KEY", "STRIDE_DEFAULT_MODELS"):
        env.pop(name, None)
    log = (root / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready(port):
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not get ready in 120 s"
            time.sleep(0.2)
        yield port, grpc_port, workdir
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.parametrize(("command", "answer"), curl_cases())
def test_curl_example_answers_2xx(command: list[str], answer: str | None, docs_server) -> None:
    port, _, workdir = docs_server
    words = [DOC_HTTP.sub(f"http://127.0.0.1:{port}", word) for word in command]
    assert not set(words) & {"|", ">", "&&", ";"}, "a runnable example is one curl command; mark it or split it"
    result = subprocess.run(["curl", "--max-time", "60", "-w", "%{stderr}%{http_code}", *words[1:]], cwd=workdir,
                            capture_output=True, timeout=90)
    status = result.stderr.decode(errors="replace").strip()
    assert result.returncode == 0 and status.isdigit() and 200 <= int(status) < 300, (
        f"{shlex.join(command)}: exit {result.returncode}, HTTP {status}, {result.stdout[:500]!r}")
    if answer is not None:
        problems = contains(json.loads(result.stdout), json.loads(answer))
        assert not problems, f"the answer differs from the documented one: {problems}"


@pytest.mark.parametrize("block", python_cases())
def test_python_example_runs_and_prints_what_the_docs_show(block: Block, docs_server) -> None:
    port, grpc_port, workdir = docs_server
    code = DOC_GRPC.sub(f"127.0.0.1:{grpc_port}", DOC_HTTP.sub(lambda m: m[0].replace("8000", str(port)), block.body))
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    missing = missing_output(documented_output(block.body), result.stdout)
    assert not missing, f"printed:\n{result.stdout}\nthe docs show, not printed: {missing}"
