"""Requests in flight across batches: the pacer's schedule worked out by hand, the batches-per-actor rule, and an HTTP
stage called with several batches at once (as a threaded Ray Data actor calls it) against the fake server, whose
answers the tests hold and release with gates: counts and orders are asserted, never durations."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.core.config import BackendConfig
from engine.core.schema import new_row
from engine.devkit.fake_openai import FakeOpenAI
from engine.models.backends.base import ChatRequest, RequestPacer, batches_in_flight
from engine.models.backends.http import HttpBackendConfig, HttpChatBackend
from engine.models.prompts import Prompt
from engine.stages.model_stage import BatchedModelStage, batches_per_actor
from tests.engine.test_http_backend import _PROXY_VARS

HOLD_S = 10.0  # the longest a gated answer waits; only reached when a test is about to fail


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_pacer_spreads_starts_evenly_and_lets_a_burst_through_after_idle():
    clock = FakeClock()
    pacer = RequestPacer(per_s=2, clock=clock, sleep=clock.sleep)
    # Five callers at t=0, 2/s: they start at 0, 0.5, 1.0, 1.5 and 2.0 s.
    assert [pacer.wait() for _ in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert clock.slept == [0.5, 1.0, 1.5, 2.0]
    clock.now = 10.0  # long idle: no debt is carried over
    assert pacer.wait() == 0.0
    bursty = RequestPacer(per_s=4, burst=3, clock=clock, sleep=clock.sleep)
    # Three go at once; then one per 0.25 s: 10.25 is the 4th start (steady slot 4 at 10.75 minus 2 x 0.25 slack).
    assert [bursty.wait() for _ in range(5)] == [0.0, 0.0, 0.0, 0.25, 0.5]
    with pytest.raises(ValueError, match="per_s > 0"):
        RequestPacer(per_s=0)


@pytest.mark.parametrize(("window", "batch", "expected"), [(32, 16, 4), (32, 32, 2), (8, 64, 1), (5, 2, 5)])
def test_batches_in_flight_hold_twice_the_window(window, batch, expected):
    assert batches_in_flight(window, batch) == expected  # ceil(2 x window / batch), at least 1


def test_only_http_stages_run_several_batches_per_actor():
    http = BackendConfig.model_validate({"kind": "http", "http": {"base_url": "http://127.0.0.1:1/v1", "model": "m",
                                                                  "api_key_env": "", "max_concurrency": 32}})
    local = BackendConfig.model_validate({"kind": "local", "local": {"model": "tiny-lm:x", "kind": "causal_lm"}})
    assert (batches_per_actor(http, 16), batches_per_actor(local, 16), batches_per_actor(None, 16)) == (4, 1, 1)


class EchoStage(BatchedModelStage):
    name = "echo"
    prompt = Prompt("echo", "{text}")

    def request(self, row):
        return ChatRequest([{"role": "user", "content": row["description"]}], max_tokens=8, tag=self.name)

    def accept(self, row, text):
        row["consistency_method"] = json.loads(text)["echo"]


class Gate:
    """Holds every answer whose prompt contains `held` (all of them for held="") until released."""

    def __init__(self, held: str = "") -> None:
        self.held = held
        self.open = threading.Event()

    def __call__(self, body, prompt):
        if self.held in prompt:
            self.open.wait(HOLD_S)
        return None  # then answer as usual (the echo)


@pytest.fixture
def gated(monkeypatch):
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    servers = []

    def make(gate: Gate) -> FakeOpenAI:
        servers.append(FakeOpenAI(responder=gate).__enter__())
        return servers[-1]

    yield make
    for server in servers:
        server.__exit__(None, None, None)


def _backend(server: FakeOpenAI, window: int) -> HttpChatBackend:
    return HttpChatBackend(HttpBackendConfig(base_url=server.url, model="m", api_key_env="", max_retries=0,
                                             timeout_s=30.0, max_concurrency=window))


def _batches(n: int, size: int, slow: int | None = None) -> list[list[dict]]:
    text = ["slow" if slow == i else f"q{i}" for i in range(n * size)]
    return [[new_row(f"/c/{i}.mp4", description=text[i]) for i in range(b * size, (b + 1) * size)] for b in range(n)]


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + HOLD_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_concurrent_batches_fill_the_window_and_no_more(gated):
    # Window 8, batches of 2: one batch at a time could hold 2 in flight; batches_in_flight(8, 2) = 8 batches at
    # once hold 16 requests, of which the backend sends exactly 8 while the server holds every answer.
    gate = Gate()
    server = gated(gate)
    with _backend(server, window=8) as backend, ThreadPoolExecutor(batches_in_flight(8, 2)) as actor:
        stage = EchoStage(backend)
        futures = [actor.submit(stage, batch) for batch in _batches(8, 2)]
        _until(lambda: server.max_in_flight >= 8, "the window never filled")
        held = server.total_calls
        gate.open.set()
        rows = [row for future in futures for row in future.result()]
    assert (held, server.max_in_flight, server.total_calls) == (8, 8, 16)
    assert [row["consistency_method"] for row in rows] == [f"q{i}" for i in range(16)]
    assert backend.usage()["total"]["requests"] == 16


def test_a_slow_answer_holds_only_its_own_batch(gated):
    # Four batches of 4 at once, window 4; the first request of batch 0 is held by the server. Batches 1-3 (12
    # requests, through the 3 other slots) all return while it is held; then batch 0 returns with the answer.
    gate = Gate(held="slow")
    server = gated(gate)
    with _backend(server, window=4) as backend, ThreadPoolExecutor(4) as actor:
        stage = EchoStage(backend)
        futures = [actor.submit(stage, batch) for batch in _batches(4, 4, slow=0)]
        _until(lambda: all(f.done() for f in futures[1:]), "a slow answer held the other batches")
        first_done_early = futures[0].done()
        gate.open.set()
        rows = futures[0].result()
    assert first_done_early is False and server.calls["slow"] == 1 and server.total_calls == 16
    assert [row["consistency_method"] for row in rows] == ["slow", "q1", "q2", "q3"]


def test_a_question_underway_in_another_batch_is_not_paid_again(gated):
    gate = Gate()
    server = gated(gate)
    with _backend(server, window=4) as backend, ThreadPoolExecutor(2) as actor:
        lookups = threading.Semaphore(0)

        class Spy(dict):  # counts the lookups of a question underway: the second batch's is the one awaited
            def __contains__(self, key):
                lookups.release()
                return super().__contains__(key)

        backend._pending = Spy()
        first = actor.submit(backend.chat, [ChatRequest([{"role": "user", "content": "same"}])])
        _until(lambda: server.total_calls == 1, "the first request never arrived")
        second = actor.submit(backend.chat, [ChatRequest([{"role": "user", "content": "same"}])])
        for _ in range(2):
            assert lookups.acquire(timeout=HOLD_S)
        gate.open.set()
        [a], [b] = first.result(), second.result()
    assert server.total_calls == 1 and a.text == b.text
    assert (a.cached, a.attempts, b.cached, b.attempts) == (False, 1, True, 0)
    assert backend.usage()["total"] | {"usd": 0} == {"requests": 2, "cache_hits": 1, "http_calls": 1,
                                                     "prompt_tokens": 1, "completion_tokens": 5, "usd": 0}


def test_models_benchmark_runs_each_way_on_the_same_requests(monkeypatch):
    from engine.devkit.benchmark_models import Scenario, benchmark_models

    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    scenario = Scenario(requests=16, batch_size=4, latency_s=0.01, slow_s=0.02, max_concurrency=2, paced_per_s=1000)
    results = benchmark_models(FakeOpenAI, scenario)
    runs = results["runs"]
    assert list(runs) == ["before", "after", "after_small_batches", "after_paced"]
    # batches_in_flight(2, 4) = 1 batch at once: `after` is `before` here; small batches: 1 row x 4 at once.
    assert [(r["batch_size"], r["batches_at_once"]) for r in runs.values()] == [(4, 1), (4, 1), (1, 4), (4, 1)]
    assert all(r["answered"] == r["server_calls"] == 16 and r["max_in_flight"] <= 2 for r in runs.values())
    assert results["scenario"]["mean_latency_s"] == 0.0125  # (12 x 0.01 + 4 x 0.02) / 16
