"""The dynamic batcher: shared runs under concurrency, no wait when alone, bounded admission, fixed batches."""

import asyncio
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.batching import BatchPolicy, BatchStats, DynamicBatcher
from service.errors import StrideError
from tests.conftest import png_bytes


class RecordingModel:
    """Doubles its input; records the batch sizes it was run with and can be held to let a queue build."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.gate.wait(5)
        self.batch_sizes.append(len(batch))
        return [batch * 2.0]


def far() -> float:
    return time.perf_counter() + 30


async def submit(batcher: DynamicBatcher, value: float) -> np.ndarray:
    with batcher.admit() as admission:
        outputs, _, _ = await batcher.infer(admission, np.full((1, 2, 2), value, np.float32), far())
        return outputs[0]


def test_concurrent_requests_share_one_run_and_get_their_own_rows() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=8, max_wait_ms=0, max_queue=64))

    async def scenario() -> list[np.ndarray]:
        model.gate.clear()  # hold the first run so the other seven queue up behind it
        first = asyncio.ensure_future(submit(batcher, 0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(submit(batcher, v)) for v in range(1, 8)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    batcher.close()
    assert model.batch_sizes == [1, 7]
    for value, result in enumerate(results):
        np.testing.assert_allclose(result, np.full((1, 2, 2), 2.0 * value))


def test_a_lone_request_does_not_wait_for_company() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=8, max_wait_ms=500, max_queue=64))
    started = time.perf_counter()
    asyncio.run(submit(batcher, 1))
    elapsed = time.perf_counter() - started
    batcher.close()
    assert model.batch_sizes == [1]
    assert elapsed < 0.25, f"a single request waited {elapsed:.3f}s for a batch that could not come"


def test_admission_is_bounded() -> None:
    batcher = DynamicBatcher("m", RecordingModel(), BatchPolicy(max_batch_size=2, max_queue=2))
    first, second = batcher.admit(), batcher.admit()
    with pytest.raises(StrideError) as refused:
        batcher.admit()
    assert refused.value.status == 503 and refused.value.code == "overloaded"
    assert refused.value.headers["Retry-After"] == "1"
    first.__exit__(None, None, None)
    batcher.admit().__exit__(None, None, None)  # a place was freed
    second.__exit__(None, None, None)
    assert batcher.in_flight == 0
    batcher.close()


def test_queue_smaller_than_batch_is_refused_as_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        BatchPolicy(max_batch_size=32, max_queue=8)


@pytest.mark.parametrize(("fixed", "most_runs"), [(1, 3), (4, 2)])
def test_fixed_batch_graphs_run_one_by_one_or_padded(fixed: int, most_runs: int) -> None:
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=8, max_wait_ms=0), fixed_batch=fixed)

    async def scenario() -> list[np.ndarray]:
        model.gate.clear()
        tasks = [asyncio.ensure_future(submit(batcher, v)) for v in (1, 2, 3)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    batcher.close()
    assert all(size == fixed for size in model.batch_sizes), model.batch_sizes  # padded to the graph's batch
    assert len(model.batch_sizes) <= most_runs and (fixed > 1 or len(model.batch_sizes) == 3)
    for value, result in zip((1, 2, 3), results, strict=True):
        np.testing.assert_allclose(result, np.full((1, 2, 2), 2.0 * value))


def test_expired_requests_are_dropped_before_running() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=4))

    async def scenario() -> None:
        with batcher.admit() as admission:
            await batcher.infer(admission, np.zeros((1, 2, 2), np.float32), time.perf_counter() - 1)

    with pytest.raises(StrideError) as caught:
        asyncio.run(scenario())
    batcher.close()
    assert caught.value.status == 504 and model.batch_sizes == []


def test_failures_reach_every_waiting_request_and_the_thread_survives() -> None:
    calls = []

    def flaky(batch: np.ndarray) -> list[np.ndarray]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [batch]

    batcher = DynamicBatcher("m", flaky, BatchPolicy(max_batch_size=4))
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(submit(batcher, 1))
    asyncio.run(submit(batcher, 2))
    batcher.close()
    assert calls == [1, 1]


def test_stats_hooks_see_batches_and_depth() -> None:
    sizes, depths = [], []
    stats = BatchStats(on_batch=lambda size, seconds: sizes.append(size), on_depth=depths.append)
    batcher = DynamicBatcher("m", RecordingModel(), BatchPolicy(), stats=stats)
    asyncio.run(submit(batcher, 1))
    batcher.close()
    assert sizes == [1] and depths[0] == 1 and depths[-1] == 0


def test_http_requests_share_onnx_runtime_runs(make_client, tiny_model_dir) -> None:
    """Concurrent HTTP requests to one model are answered from shared ONNX Runtime runs."""
    from concurrent.futures import ThreadPoolExecutor

    client = make_client(tiny_model_dir, max_batch_wait_ms=20)
    entry = client.app.state.registry.get("tiny")
    session_run = entry.batcher._run
    sizes: list[int] = []

    def slow_run(batch: np.ndarray) -> list[np.ndarray]:
        sizes.append(len(batch))
        time.sleep(0.05)  # a slow model: requests arriving meanwhile must join the next batch
        return session_run(batch)

    entry.batcher._run = slow_run
    image = png_bytes(Image.new("L", (8, 8), 255))

    def post(_: int) -> int:
        response = client.post("/v1/classify", content=image, headers={"content-type": "image/png"})
        assert response.json()["predictions"][0]["label"] == "bright"
        return response.status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, range(32)))
    assert statuses == [200] * 32
    assert sum(sizes) == 32
    assert max(sizes) > 1, f"every request ran alone: {sizes}"
    metrics = client.get("/metrics").text
    assert f'stride_batch_size_count{{model="tiny"}} {float(len(sizes))}' in metrics


def test_a_graph_exported_with_batch_one_serves_concurrent_requests(make_client, tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import tiny_classifier_graph, tiny_metadata, write_model

    graph = tiny_classifier_graph()
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # fixed batch of one
    graph.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    write_model(tmp_path / "single.onnx", graph, tiny_metadata())
    client = make_client(tmp_path)
    entry = client.app.state.registry.get("single")
    assert entry.session.fixed_batch == 1
    image = png_bytes(Image.new("L", (8, 8), 0))

    def post(_: int) -> str:
        response = client.post("/v1/classify", content=image, headers={"content-type": "image/png"})
        return response.json()["predictions"][0]["label"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(16))) == ["dark"] * 16
    assert "stride_batch_size_bucket{le=\"1.0\",model=\"single\"} 16.0" in client.get("/metrics").text


def test_a_retired_batcher_stops_at_once_when_idle() -> None:
    batcher = DynamicBatcher("m", RecordingModel(), BatchPolicy(max_batch_size=2))
    thread = batcher._thread
    batcher.retire()
    assert not batcher.running
    thread.join(5)
    assert not thread.is_alive()


def test_a_retired_batcher_finishes_what_it_admitted_then_stops() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=2))
    thread = batcher._thread

    async def scenario() -> np.ndarray:
        model.gate.clear()  # the request is admitted and queued when the swap retires its batcher
        pending = asyncio.ensure_future(submit(batcher, 3))
        while batcher.in_flight == 0:  # let the request's task start and admit
            await asyncio.sleep(0)
        batcher.retire()
        assert batcher.running, "retired with a request in flight: the thread must stay until it is done"
        model.gate.set()
        return await pending

    result = asyncio.run(scenario())
    np.testing.assert_allclose(result, np.full((1, 2, 2), 6.0))
    assert not batcher.running and batcher.in_flight == 0
    thread.join(5)
    assert not thread.is_alive()


def test_a_late_request_on_a_retired_batcher_is_still_answered() -> None:
    """A request that resolved the old version before the swap may admit after its thread stopped."""
    batcher = DynamicBatcher("m", RecordingModel(), BatchPolicy(max_batch_size=2))
    batcher.retire()
    assert not batcher.running
    result = asyncio.run(submit(batcher, 5))
    np.testing.assert_allclose(result, np.full((1, 2, 2), 10.0))
    assert not batcher.running, "the thread restarted for the late request must stop again after it"
