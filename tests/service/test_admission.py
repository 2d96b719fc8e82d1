"""Early admission: refused from the route, model and headers alone, before the body is read."""

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.admission import INTERVAL_S, MIN_LIMIT, AdmissionGate
from service.api.admission import IMAGE_ROUTES, TENSOR_ROUTE
from tests.conftest import png_bytes

BRIGHT = png_bytes(Image.new("L", (8, 8), 255))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("limit", "admitted"), [(0, 0), (1, 1), (3, 3)])
def test_the_gate_admits_up_to_its_limit(limit: int, admitted: int) -> None:
    gate = AdmissionGate(Clock())
    tickets = [gate.try_admit("m", limit) for _ in range(limit + 2)]
    assert [t is not None for t in tickets] == [True] * admitted + [False] * (len(tickets) - admitted)
    assert gate.in_flight("m") == admitted and gate.in_flight("other") == 0
    for ticket in tickets[:admitted]:
        gate.release("m", ticket, limit)
    assert gate.in_flight("m") == 0 and (gate.try_admit("m", limit) is not None) is (limit > 0)


def run_interval(gate: AdmissionGate, clock: Clock, seconds_each: float, requests: int) -> None:
    """`requests` answered in one admission interval, each taking `seconds_each`."""
    for _ in range(requests):
        started = gate.try_admit("m", 16)
        assert started is not None
        clock.now += seconds_each
        gate.release("m", started, 16)
    clock.now += INTERVAL_S


def test_the_limit_shrinks_under_a_standing_queue_and_grows_back() -> None:
    clock = Clock()
    gate = AdmissionGate(clock, target_floor_s=0.005)
    run_interval(gate, clock, 0.001, 3)  # unloaded: 1 ms per request is the model's service time
    assert gate.limit("m") == 16
    limits = []
    for _ in range(8):  # every request takes 30 ms: even the fastest waited, far over 5 x 1 ms
        run_interval(gate, clock, 0.030, 3)
        limits.append(gate.limit("m"))
    assert limits == sorted(limits, reverse=True) and limits[-1] == MIN_LIMIT
    for _ in range(20):  # fast again: a quarter more per interval, up to max_queue and no further
        run_interval(gate, clock, 0.001, 3)
    assert gate.limit("m") == 16


def test_a_burst_with_some_fast_answers_keeps_the_full_limit() -> None:
    clock = Clock()
    gate = AdmissionGate(clock, target_floor_s=0.005)
    run_interval(gate, clock, 0.001, 3)
    for _ in range(5):  # queued requests are slow, but one per interval still goes straight through
        started = gate.try_admit("m", 16)
        clock.now += 0.001
        gate.release("m", started, 16)
        run_interval(gate, clock, 0.030, 3)
    assert gate.limit("m") == 16


def fill(client: TestClient, model: str) -> list[float]:
    """Take every place of the model, as requests still being answered would."""
    limit = client.app.state.registry.get(model).batcher.policy.max_queue
    tickets = [client.app.state.admission.try_admit(model, limit) for _ in range(limit)]
    assert None not in tickets
    return tickets


def free(client: TestClient, model: str, tickets: list[float]) -> None:
    limit = client.app.state.registry.get(model).batcher.policy.max_queue
    for ticket in tickets:
        client.app.state.admission.release(model, ticket, limit)


@pytest.mark.parametrize("query", ["", "?model=tiny"])  # the default model and a named one
def test_a_full_model_refuses_before_reading_the_body(make_client: Callable[..., TestClient],
                                                      tiny_model_dir: Path, query: str) -> None:
    client = make_client(tiny_model_dir, max_queue=2, max_batch_size=2)
    places = fill(client, "tiny")
    # An empty body would be a 400 once read: the 503 proves nothing of it was read or parsed.
    refused = client.post(f"/v1/classify{query}", content=b"", headers={"content-type": "image/png"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
    assert refused.headers["Retry-After"] == "1" and refused.headers["X-Request-ID"]
    assert refused.headers.get("connection") != "close", "a small unread body must not cost the connection"
    metrics = client.get("/metrics").text
    assert 'stride_admission_refusals_total{model="tiny",reason="in_flight_limit"} 1.0' in metrics
    assert 'stride_requests_total{model="tiny",route="/v1/classify",status="503"} 1.0' in metrics
    free(client, "tiny", places)
    answered = client.post(f"/v1/classify{query}", content=BRIGHT, headers={"content-type": "image/png"})
    assert answered.status_code == 200 and answered.json()["predictions"][0]["label"] == "bright"
    assert client.app.state.admission.in_flight("tiny") == 0, "an answered request must give its place back"


def test_a_large_refused_upload_closes_its_connection(make_client: Callable[..., TestClient],
                                                      tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, max_queue=1, max_batch_size=1)
    fill(client, "tiny")
    refused = client.post("/v1/classify", content=b"\0" * (1 << 20), headers={"content-type": "image/png"})
    assert refused.status_code == 503 and refused.headers["connection"] == "close"


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/v1/classify?model=nope", 404, "model_not_found"),  # the route says what is wrong, not a 503
    ("/v1/detect", 404, "model_not_found"),  # no detection model: the route's own error
])
def test_requests_the_gate_cannot_place_pass_to_the_route(make_client: Callable[..., TestClient],
                                                          tiny_model_dir: Path, path: str, status: int,
                                                          code: str) -> None:
    client = make_client(tiny_model_dir, max_queue=1, max_batch_size=1)
    fill(client, "tiny")
    answer = client.post(path, content=BRIGHT, headers={"content-type": "image/png"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)


def test_the_api_key_is_checked_before_admission(make_client: Callable[..., TestClient],
                                                 tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, max_queue=1, max_batch_size=1, api_key="k")
    fill(client, "tiny")
    assert client.post("/v1/classify", content=BRIGHT, headers={"content-type": "image/png"}).status_code == 401


def test_the_tensor_route_is_gated_by_its_model(make_client: Callable[..., TestClient], tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, max_queue=1, max_batch_size=1)
    fill(client, "tiny")
    refused = client.post("/v2/models/tiny/infer", content=b"{}", headers={"content-type": "application/json"})
    assert refused.status_code == 503 and "in flight" in refused.json()["error"]  # the protocol's shape


def test_the_gated_routes_are_the_apps_inference_routes(client: TestClient) -> None:
    posts = {path for path, operations in client.app.openapi()["paths"].items() if "post" in operations}
    assert set(IMAGE_ROUTES) <= posts
    tensor_routes = {p for p in posts if p.startswith("/v2/") and p.endswith("/infer")}
    assert tensor_routes and all(TENSOR_ROUTE.match(p.replace("{name}", "m").replace("{version}", "1"))
                                 for p in tensor_routes)


@pytest.mark.parametrize(("floor_s", "each_s", "shrinks"), [(0.05, 0.030, False), (0.05, 0.080, True),
                                                            (0.005, 0.030, True)])
def test_the_target_floor_lets_a_sustained_closed_loop_through(floor_s: float, each_s: float, shrinks: bool) -> None:
    """Answers that each wait behind other requests (30 ms on a 1 ms model) are not a standing queue under a
    50 ms floor; over the floor they are."""
    clock = Clock()
    gate = AdmissionGate(clock, target_floor_s=floor_s)
    run_interval(gate, clock, 0.001, 3)
    for _ in range(4):
        run_interval(gate, clock, each_s, 3)
    assert (gate.limit("m") < 16) is shrinks
