"""API model stages: requests/s and requests in flight of one actor's stage against a loopback OpenAI-compatible
server with a scripted latency and one slow answer per batch (`python jobs/benchmark.py models`).

The same requests, the same stage class and the same backend settings run each way, one after another in one
process, each against a fresh server (which counts the requests it holds at once):
- `before`: one batch at a time, as a Ray Data actor runs a callable class by default;
- `after`: `batches_in_flight(max_concurrency, batch_size)` batches at once, as the pipeline runs an HTTP stage's
  actors (Ray Data's `max_concurrent_calls_per_actor`, threads), sharing the backend's max_concurrency slots;
- `after_small_batches`: the same number of rows held by the actor, in batches a quarter the size;
- `after_paced`: `after` with the backend's requests_per_s set below what the window could do.
`window_efficiency` is the mean number of requests the server was answering (scripted answer seconds over wall
seconds, Little's law) over max_concurrency: what engine.ops.capacity multiplies the window by.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from engine.core.schema import new_row
from engine.models.backends.base import ChatRequest, batches_in_flight
from engine.models.backends.http import HttpBackendConfig, HttpChatBackend
from engine.models.prompts import Prompt
from engine.stages.base import Row
from engine.stages.model_stage import BatchedModelStage


class LoopbackServer(Protocol):
    """What the benchmark needs of the fake server (engine/devkit/fake_openai.py: `[[sleep:S]]` in a prompt
    delays its answer by S seconds)."""

    url: str
    max_in_flight: int
    total_calls: int


ServerFactory = Callable[[], AbstractContextManager[LoopbackServer]]


@dataclass(frozen=True)
class Scenario:
    requests: int = 256
    batch_size: int = 16
    latency_s: float = 0.2
    slow_s: float = 3.0  # the first request of every `batch_size` answers this late
    max_concurrency: int = 32
    paced_per_s: float = 10.0

    def sleeps(self) -> list[float]:
        return [self.slow_s if i % self.batch_size == 0 else self.latency_s for i in range(self.requests)]


class EchoStage(BatchedModelStage):
    """A model stage whose request is the row's prompt and whose answer is the fake server's echo."""

    name = "bench"
    prompt = Prompt("bench", "{text}")
    repair = False

    def request(self, row: Row) -> ChatRequest:
        return ChatRequest([{"role": "user", "content": row["_prompt"]}], max_tokens=16, tag=self.name)

    def accept(self, row: Row, text: str) -> None:
        row["_answer"] = json.loads(text)["echo"]


def run_actor(server: LoopbackServer, scenario: Scenario, batch_size: int, calls: int,
              requests_per_s: float | None = None) -> dict[str, Any]:
    """One actor's stage over the scenario's requests, `calls` batches at once; its figures."""
    sleeps = scenario.sleeps()
    rows = [new_row(f"/bench/{i}.mp4") | {"_prompt": f"request {i} [[sleep:{s}]]"} for i, s in enumerate(sleeps)]
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    config = HttpBackendConfig(base_url=server.url, model="bench", api_key_env="", max_retries=0, timeout_s=60.0,
                               max_concurrency=scenario.max_concurrency, requests_per_s=requests_per_s)
    with HttpChatBackend(config) as backend, ThreadPoolExecutor(calls, thread_name_prefix="actor-call") as actor:
        stage = EchoStage(backend)
        started = time.perf_counter()
        list(actor.map(stage, batches))
        seconds = time.perf_counter() - started
    answered = sum(1 for row in rows if row.get("_answer") is not None)
    in_flight = sum(sleeps) / seconds
    return {"batch_size": batch_size, "batches_at_once": calls, "requests_per_s_limit": requests_per_s,
            "requests": len(rows), "answered": answered, "server_calls": server.total_calls,
            "seconds": round(seconds, 3), "requests_per_s": round(answered / seconds, 3),
            "max_in_flight": server.max_in_flight, "mean_in_flight": round(in_flight, 2),
            "window_efficiency": round(in_flight / scenario.max_concurrency, 3)}


def benchmark_models(server_factory: ServerFactory, scenario: Scenario = Scenario()) -> dict[str, Any]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(name, None)  # loopback traffic must not go through a proxy (requests honours these)
    calls = batches_in_flight(scenario.max_concurrency, scenario.batch_size)
    small = max(1, scenario.batch_size // 4)
    ways = {"before": (scenario.batch_size, 1, None),
            "after": (scenario.batch_size, calls, None),
            "after_small_batches": (small, math.ceil(calls * scenario.batch_size / small), None),
            "after_paced": (scenario.batch_size, calls, scenario.paced_per_s)}
    runs = {}
    for name, (batch_size, at_once, per_s) in ways.items():
        with server_factory() as server:
            runs[name] = run_actor(server, scenario, batch_size, at_once, per_s)
    mean_latency = sum(scenario.sleeps()) / scenario.requests
    before, after = runs["before"], runs["after"]
    return {"benchmark": "models", "scenario": scenario.__dict__ | {"mean_latency_s": round(mean_latency, 4)},
            "ideal_requests_per_s": round(scenario.max_concurrency / mean_latency, 2), "runs": runs,
            "requests_per_s_ratio": round(after["requests_per_s"] / before["requests_per_s"], 2),
            "max_in_flight_ratio": round(after["max_in_flight"] / before["max_in_flight"], 2)}
