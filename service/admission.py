"""Early admission: how many requests each model has accepted and not yet answered, and how many it may.

The count starts when a request's headers have arrived (before its body is read or parsed) and ends when
its answer has been sent, so a refusal costs only the headers' parsing and a short 503.

The limit adapts to the model's measured service time (a CoDel-style rule): every INTERVAL_S it looks at
the fastest request answered in that interval. If even the fastest took longer than the target, requests
are standing in a queue (sustained overload) and the limit shrinks; otherwise it grows back by a quarter
per interval, up to the model's `max_queue` (STRIDE_MAX_QUEUE or its STRIDE_BATCHING override). A burst at a
load the model sustains leaves some requests fast, so it is absorbed up to `max_queue` instead of refused;
under overload the limit settles near what the model answers within the target, which bounds the accepted
requests' latency. The target is TARGET_FACTOR x the fastest answer the model has given (its service time
unloaded), at least the floor (STRIDE_ADMISSION_TARGET_MS, 1 s by default). Clients that keep N requests
in flight wait N service times without any overload; a tight floor refused them wholesale (8 connections on
a 640x640 YOLO export, 30 ms each, got 4,000 503s a second and less goodput than with no limit at all), so
the default only steps in when a queue of seconds stands; lower it to trade refusals for latency.
docs/performance.md ("Overload") has the measurements behind it.

Used only from the event loop, so it needs no lock; the clock is injected for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL_S = 0.1
TARGET_FACTOR = 5.0
DEFAULT_TARGET_FLOOR_S = 1.0
SHRINK = 0.7
MIN_LIMIT = 2  # one request decoding while another runs: below this the model idles between requests


@dataclass
class _ModelAdmission:
    limit: int
    in_flight: int = 0
    window_end: float = 0.0
    window_fastest: float = math.inf
    fastest_ever: float = math.inf


class AdmissionGate:
    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 target_floor_s: float = DEFAULT_TARGET_FLOOR_S) -> None:
        self._clock = clock
        self._target_floor_s = target_floor_s
        self._models: dict[str, _ModelAdmission] = {}

    def try_admit(self, model: str, max_limit: int) -> float | None:
        """Take a place for one request to `model`: its start time, to hand back to release(); None (and
        nothing taken) when the model's current limit is reached."""
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelAdmission(limit=max_limit, window_end=self._clock() + INTERVAL_S)
        state.limit = min(state.limit, max_limit)  # the setting can only have shrunk with a new model version
        if state.in_flight >= state.limit:
            return None
        state.in_flight += 1
        return self._clock()

    def release(self, model: str, started: float, max_limit: int) -> None:
        state = self._models[model]
        state.in_flight -= 1
        now = self._clock()
        took = now - started
        state.window_fastest = min(state.window_fastest, took)
        state.fastest_ever = min(state.fastest_ever, took)
        if now >= state.window_end:
            self._adapt(state, max_limit, self._target_floor_s)
            state.window_end, state.window_fastest = now + INTERVAL_S, math.inf

    def limit(self, model: str) -> int | None:
        state = self._models.get(model)
        return state.limit if state else None

    def in_flight(self, model: str) -> int:
        state = self._models.get(model)
        return state.in_flight if state else 0

    @staticmethod
    def _adapt(state: _ModelAdmission, max_limit: int, target_floor_s: float) -> None:
        target = max(target_floor_s, TARGET_FACTOR * state.fastest_ever)
        if state.window_fastest > target:  # even the fastest waited: a standing queue
            state.limit = max(MIN_LIMIT, min(max_limit, math.floor(state.limit * SHRINK)))
        else:  # recover within a couple of seconds, not one place per interval from the floor
            state.limit = min(max_limit, state.limit + max(1, state.limit // 4))
