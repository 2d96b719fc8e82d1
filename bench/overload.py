"""Overload: does Stride keep its goodput, answer 503s cheaply and bound accepted latency at 4x its
sustainable rate?

    .venv/bin/python bench/overload.py                        # starts `python -m service` with LeNet-5 only
    .venv/bin/python bench/overload.py --url http://127.0.0.1:8000/v1/classify?model=lenet5   # a running one

Open loop (requests are sent on a fixed schedule whatever the answers, as real clients arrive), over a pool of
keep-alive connections (at most --connections), with a small raw HTTP/1.1 client on asyncio so the generator
costs little of the two cores it shares with the server. Latency is from the moment a request is written to
its answer's last byte; `max_backlog` > 0 says requests waited for a free connection (the pool was exhausted).

1. Ramp: offered rates from --start-rate up by --ramp-factor, each for --step-s; the sustainable rate is the
   highest one with zero 503s, zero errors and at least 97% of it answered 200 (one process, one run).
2. Overload: 4x that rate with --connections (128) connections for --overload-s.
Criteria (issue 17): goodput >= 90% of the sustainable rate, 503 p99 <= 20 ms, accepted p99 <= 3x the p99
at the sustainable rate. Prints a table and one `OVERLOAD_JSON {...}` line; exit status 1 if any fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "docs" / "samples" / "digit-7.png"
MODEL = REPO / "models" / "lenet5.onnx"

GOODPUT_FLOOR, REFUSAL_P99_CEILING_MS, ACCEPTED_P99_FACTOR = 0.90, 20.0, 3.0
SUSTAINED_SHARE = 0.97  # a step counts as sustained when this share of its offered requests got 200


@dataclass
class Step:
    rate: float
    seconds: float
    ok_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)  # 503
    other: dict[str, int] = field(default_factory=dict)  # other statuses and client errors
    max_backlog: int = 0  # most requests due at once with no free connection (the pool was exhausted)
    server_p99_ms: dict[str, float | None] = field(default_factory=dict)  # by status, from the server's histogram
    admission_limit: float | None = None  # the model's early-admission limit when the step ended

    @property
    def goodput(self) -> float:
        return len(self.ok_ms) / self.seconds

    @property
    def sustained(self) -> bool:
        return not self.refused_ms and not self.other and len(self.ok_ms) >= SUSTAINED_SHARE * self.rate * self.seconds

    def row(self, label: str) -> dict[str, object]:
        return {"phase": label, "offered_rps": round(self.rate, 1), "goodput_rps": round(self.goodput, 1),
                "ok": len(self.ok_ms), "refused_503": len(self.refused_ms), "other": self.other,
                "max_backlog": self.max_backlog, "server_p99_ms_at_most": self.server_p99_ms,
                "admission_limit_at_end": self.admission_limit,
                "ok_p50_ms": pct(self.ok_ms, 50), "ok_p99_ms": pct(self.ok_ms, 99),
                "refused_p50_ms": pct(self.refused_ms, 50), "refused_p99_ms": pct(self.refused_ms, 99)}


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened after a `Connection: close` answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        start = lower.find(b"content-length:")
        length = int(lower[start + 15: lower.find(b"\r\n", start)]) if start >= 0 else 0
        await self.reader.readexactly(length)
        if b"connection: close" in lower:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_step(url: str, body: bytes, rate: float, seconds: float, connections: int) -> Step:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = (f"POST {target} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: image/png\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    step = Step(rate, seconds)
    idle = [Connection(parts.hostname or "127.0.0.1", parts.port or 80) for _ in range(connections)]
    in_flight: set[asyncio.Task[None]] = set()

    async def one(conn: Connection) -> None:
        sent = time.perf_counter()
        try:
            status = await conn.request(payload)
        except (OSError, asyncio.IncompleteReadError) as exc:
            conn.close()
            step.other[type(exc).__name__] = step.other.get(type(exc).__name__, 0) + 1
        else:
            elapsed_ms = (time.perf_counter() - sent) * 1000
            if status == 200:
                step.ok_ms.append(elapsed_ms)
            elif status == 503:
                step.refused_ms.append(elapsed_ms)
            else:
                step.other[str(status)] = step.other.get(str(status), 0) + 1
        idle.append(conn)

    started = time.perf_counter()
    due = 0
    total = int(rate * seconds)
    backlog = 0
    while due < total:
        now = time.perf_counter()
        should_have_sent = min(total, int((now - started) * rate) + 1)
        backlog += should_have_sent - due
        due = should_have_sent
        while backlog and idle:
            task = asyncio.create_task(one(idle.pop()))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            backlog -= 1
        step.max_backlog = max(step.max_backlog, backlog)
        await asyncio.sleep(0.0005)
    while backlog:  # what is still due when the schedule ends goes out as connections free up
        if idle:
            task = asyncio.create_task(one(idle.pop()))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            backlog -= 1
        else:
            await asyncio.sleep(0.0005)
    if in_flight:
        await asyncio.wait(in_flight, timeout=60)
    for conn in idle:
        conn.close()
    step.seconds = max(seconds, time.perf_counter() - started)
    return step


def scrape(metrics_url: str) -> str:
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        return answer.read().decode()


def admission_limit(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("stride_admission_limit{"):
            return float(line.rsplit(" ", 1)[1])
    return None  # never changed from the model's max_queue


def latency_buckets(text: str) -> dict[tuple[str, float], float]:
    """(status, bucket upper bound in s) -> cumulative count of the server's own request-latency histogram."""
    buckets: dict[tuple[str, float], float] = {}
    for line in text.splitlines():
        if line.startswith("stride_request_duration_seconds_bucket{") and 'route="/v1/classify"' in line:
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="')[1].split('"')[0]
            bound = labels.split('le="')[1].split('"')[0]
            buckets[(status, float(bound))] = float(value)
    return buckets


Buckets = dict[tuple[str, float], float]


def server_p99(before: Buckets, after: Buckets) -> dict[str, float | None]:
    """The p99 as the server measured it (middleware entry to answer sent), as the bucket bound it is below."""
    result: dict[str, float | None] = {}
    for status in sorted({s for s, _ in after}):
        bounds = sorted(b for s, b in after if s == status)
        counts = [after[(status, b)] - before.get((status, b), 0.0) for b in bounds]
        total = counts[-1] if counts else 0.0
        result[status] = next((b * 1000 for b, c in zip(bounds, counts, strict=True) if total and c >= 0.99 * total),
                              None)
    return result


async def measured_step(url: str, body: bytes, rate: float, seconds: float, connections: int) -> Step:
    metrics_url = url.split("/v1/")[0] + "/metrics"
    before = latency_buckets(await asyncio.to_thread(scrape, metrics_url))
    step = await run_step(url, body, rate, seconds, connections)
    after = await asyncio.to_thread(scrape, metrics_url)
    step.server_p99_ms = server_p99(before, latency_buckets(after))
    step.admission_limit = admission_limit(after)
    return step


async def measure(args: argparse.Namespace, url: str) -> dict[str, object]:
    body = IMAGE.read_bytes()
    await run_step(url, body, args.start_rate, 2.0, args.connections)  # warm-up
    ramp: list[Step] = []
    rate = args.start_rate
    while True:
        step = await measured_step(url, body, rate, args.step_s, args.connections)
        ramp.append(step)
        print(json.dumps(step.row("ramp")), flush=True)
        if not step.sustained or rate * args.ramp_factor > args.max_rate:
            break
        rate *= args.ramp_factor
    sustained = [s for s in ramp if s.sustained]
    if not sustained:
        raise SystemExit(f"even {args.start_rate} req/s was not sustained: lower --start-rate")
    base = max(sustained, key=lambda s: s.rate)
    overload = await measured_step(url, body, 4 * base.rate, args.overload_s, args.connections)
    print(json.dumps(overload.row("4x")), flush=True)
    base_p99 = pct(base.ok_ms, 99) or 0.0
    checks = {
        "goodput >= 90% of sustainable": overload.goodput >= GOODPUT_FLOOR * base.rate,
        "503 p99 <= 20 ms": (pct(overload.refused_ms, 99) or 0.0) <= REFUSAL_P99_CEILING_MS,
        "accepted p99 <= 3x sustainable p99": (pct(overload.ok_ms, 99) or 0.0) <= ACCEPTED_P99_FACTOR * base_p99,
        "no errors other than 503": not overload.other,
    }
    return {"sustainable": base.row("sustainable"), "overload": overload.row("4x"),
            "goodput_share": round(overload.goodput / base.rate, 3),
            "accepted_p99_factor": round((pct(overload.ok_ms, 99) or 0.0) / base_p99, 2) if base_p99 else None,
            "checks": checks}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models_dir: Path, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    environment = os.environ | {"STRIDE_PORT": str(port), "STRIDE_MODELS_DIR": str(models_dir),
                                "STRIDE_GRPC_PORT": "0", "STRIDE_MAX_QUEUE": "16", "STRIDE_MAX_BATCH_SIZE": "16",
                                "STRIDE_WORKERS": "1",  # admission limits are per process: one, as issue 17 measured
                                "STRIDE_DRAIN_DELAY_S": "0"} | env
    log = open(Path(tempfile.gettempdir()) / "stride_overload_server.log", "wb")  # noqa: SIM115 (lives with the server)
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=environment, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return base, process
        except OSError:
            time.sleep(0.2)
        if process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"the server did not become ready; see {log.name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="POST target of a running server; default: start one serving LeNet-5")
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--start-rate", type=float, default=100.0)
    parser.add_argument("--ramp-factor", type=float, default=1.2)
    parser.add_argument("--max-rate", type=float, default=5000.0)
    parser.add_argument("--step-s", type=float, default=5.0)
    parser.add_argument("--overload-s", type=float, default=10.0)
    parser.add_argument("--env", action="append", default=[], metavar="STRIDE_X=V",
                        help="extra server settings (repeatable), e.g. STRIDE_ACCESS_LOG=false")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    try:
        import uvloop  # the generator's own loop: cheaper per request, so more of the CPU is left to the server

        uvloop.install()
    except ImportError:
        pass
    process = None
    url = args.url
    with tempfile.TemporaryDirectory() as models_dir:
        if url is None:
            os.symlink(MODEL, Path(models_dir) / MODEL.name)
            env = dict(item.split("=", 1) for item in args.env)
            base, process = start_server(Path(models_dir), env)
            url = base + "/v1/classify?model=lenet5"
        try:
            result = asyncio.run(measure(args, url))
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    for name, passed in result["checks"].items():  # type: ignore[union-attr]
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    print("OVERLOAD_JSON " + json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(result["checks"].values()) else 1  # type: ignore[union-attr]


if __name__ == "__main__":
    sys.exit(main())
