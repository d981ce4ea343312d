"""Engine and trainer metrics: the pure summaries by hand, the no-Ray no-op, and a real round trip through a
local Ray's metrics agent (Prometheus text) from a Ray Data actor pool and from the driver.

The clip batch: 6 rows, 3 kept (2.0 + 3.0 + 1.5 media seconds), rejected probe/duration_too_short (0.25 s),
probe/unreadable_container (no duration) and asr/wer_above_threshold (4.0 s): 10.75 media seconds in all.
The backend (prices $0.1 / $0.5 per 1K prompt / completion tokens) answers, over two batches:
  annotate: 4 paid answers (50 + 10 tokens, 1 call each), 2 cache hits, 1 failure (rate_limited, 6 calls)
            -> 7 requests (2 hit, 5 miss), 10 calls, 200 + 40 tokens, $0.02 + $0.02 = $0.04
  annotate-repair: 1 paid answer (40 + 20 tokens, 1 call) -> 1 miss, 1 call, $0.004 + $0.01 = $0.014
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections.abc import Callable

import pyarrow as pa
import pytest
import ray

from engine.core.schema import CLIP_SCHEMA, new_row, reject, rows_to_table
from engine.models.backends.base import ChatResult, UsageLog
from engine.ops import monitoring
from tests.conftest import start_local_ray
from tests.jobs.helpers import REPO

# One pytest-xdist worker for the module: `metrics_port` restarts that worker's Ray (~12 s with the restart of the
# shared one after it), and with the tests handed out one by one both workers were seen paying for it.
pytestmark = pytest.mark.xdist_group("monitoring")

OK = ChatResult(text="{}", error=None, prompt_tokens=50, completion_tokens=10, attempts=1)
HIT = ChatResult(text="{}", error=None, prompt_tokens=50, completion_tokens=10, cached=True)
FAILED = ChatResult(text=None, error="rate_limited", attempts=6)
REPAIR = ChatResult(text="{}", error=None, prompt_tokens=40, completion_tokens=20, attempts=1)
BATCHES = [[("annotate", OK), ("annotate", OK), ("annotate", HIT)],
           [("annotate", OK), ("annotate", OK), ("annotate", HIT), ("annotate", FAILED), ("annotate-repair", REPAIR)]]


def clip_table() -> pa.Table:
    rows = [new_row(f"s3://b/{i}.mp4", duration_s=d) for i, d in enumerate([2.0, 3.0, 0.25, None, 4.0, 1.5])]
    reject(rows[2], "probe", "duration_too_short")
    reject(rows[3], "probe", "unreadable_container")
    reject(rows[4], "asr", "wer_above_threshold")
    return rows_to_table(rows, CLIP_SCHEMA)


class FakeBackend:
    """A chat backend's usage side only: the real UsageLog, fed canned results."""

    model_id = "gemini-test"

    def __init__(self) -> None:
        self.log = UsageLog(self.model_id, usd_per_1k_prompt=0.1, usd_per_1k_completion=0.5)

    def answer(self, results: list[tuple[str, ChatResult]]) -> None:
        for tag, result in results:
            self.log.record(tag, result)

    def usage(self) -> dict:
        return self.log.as_dict()


class RecordingStage:
    """Stands in for a model stage in an actor pool: one backend per actor, recorders called once per batch."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.batches = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        with monitoring.stage_timer("probe", batch.num_rows):
            self.backend.answer(BATCHES[self.batches])
        self.batches += 1
        monitoring.record_backend_usage(self.backend)
        monitoring.record_clip_batch(batch)
        return batch


# -- without Ray -------------------------------------------------------------------------------------------
def test_clip_counts_by_hand():
    counts = monitoring.clip_counts(clip_table())
    assert (counts.processed, counts.kept, counts.media_seconds) == (6, 3, 10.75)
    assert counts.rejected == {("probe", "duration_too_short"): 1, ("probe", "unreadable_container"): 1,
                               ("asr", "wer_above_threshold"): 1}


def test_a_retryable_failure_is_counted_apart_from_rejections():
    rows = [new_row(f"s3://b/{i}.mp4", duration_s=1.0) for i in range(4)]
    reject(rows[0], "annotate", "model_error", "gemini: timeout", "retryable")
    reject(rows[1], "annotate", "model_error", "gemini: bad_request_400")  # final: the service refused the content
    reject(rows[2], "probe", "storage_error", "OSError: SlowDown", "retryable")
    counts = monitoring.clip_counts(rows_to_table(rows, CLIP_SCHEMA))
    assert (counts.processed, counts.kept) == (4, 1)
    assert counts.rejected == {("annotate", "model_error"): 1}
    assert counts.retryable == {("annotate", "model_error"): 1, ("probe", "storage_error"): 1}


def test_usage_delta_between_cumulative_snapshots():
    backend = FakeBackend()
    backend.answer(BATCHES[0])
    first = backend.usage()
    backend.answer(BATCHES[1])
    delta = monitoring.usage_delta(first, backend.usage())
    assert delta["annotate"] == monitoring.UsageDelta(requests=4, cache_hits=1, http_calls=8, prompt_tokens=100,
                                                      completion_tokens=20, usd=pytest.approx(0.02),
                                                      failures={"rate_limited": 1})
    assert delta["annotate-repair"].requests == 1 and delta["annotate-repair"].usd == pytest.approx(0.014)
    assert monitoring.usage_delta(None, first)["annotate"].http_calls == 2


def test_recorders_are_cheap_noops_without_ray(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whether or not a Ray of another test is up

    made = []
    monkeypatch.setattr(monitoring, "_make", made.append)
    assert monitoring._metrics() is None
    monitoring.record_clip_batch(clip_table())
    monitoring.record_build_start(6, 0)
    monitoring.record_backend_usage(FakeBackend())
    monitoring.record_train_step("run", {"step": 1, "loss": 2.0})
    ran = []
    with monitoring.stage_timer("probe", 3):
        ran.append(True)
    assert made == [] and ran == [True]  # no metric object made; the timed block still ran


def test_every_spec_is_a_valid_prometheus_name():
    assert all(re.fullmatch(r"saber_[a-z_]+", spec.name) for spec in monitoring.METRICS)
    assert len(monitoring.SPECS) == len(monitoring.METRICS)


def test_the_grafana_dashboard_shows_every_metric_and_only_those():
    dashboard = json.loads((REPO / "cluster" / "monitoring" / "grafana-saber.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for q in queries for name in re.findall(r"ray_saber_\w+", q)}
    assert used == {spec.exported for spec in monitoring.METRICS}
    assert all('SessionName=~"$session"' in q for q in queries)


# -- through a local Ray's metrics agent --------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_port():
    """A Ray of this module's own (the run's shared one is stopped first): the counters below are absolute, so
    they must start at zero. Later modules start the shared one again (tests/conftest.py::local_ray)."""
    ray.shutdown()
    port = start_local_ray()
    yield port
    ray.shutdown()


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if (match := _SAMPLE.match(line)) and not line.startswith("#"):
            samples.append((match["name"], dict(_LABEL.findall(match["labels"] or "")), float(match["value"])))
    return samples


def summed(samples, name: str, **labels: str) -> float:
    """One series summed over the processes (WorkerId) that exported it."""
    return sum(v for n, tags, v in samples if n == name and labels.items() <= tags.items())


def wait_for(port: int, expected: dict[tuple, float], timeout: float = 60,
             refresh: Callable[[], None] = lambda: None) -> dict[tuple, float]:
    """Metrics reach the agent asynchronously: poll until every expected series has its value, or time out.
    `refresh` re-sets gauges each round, as a training loop does every step (Ray drops a gauge ~20 s after its
    last set)."""
    deadline, got = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        refresh()
        samples = scrape(port)
        got = {key: summed(samples, key[0], **dict(key[1:])) for key in expected}
        if all(math.isclose(got[k], v, rel_tol=1e-9, abs_tol=1e-9) for k, v in expected.items()):
            break
        time.sleep(0.5)
    return got


@pytest.mark.slow
def test_engine_metrics_from_an_actor_pool_reach_prometheus(metrics_port):
    dataset = ray.data.from_arrow(clip_table()).map_batches(
        RecordingStage, batch_size=3, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1))
    assert dataset.count() == 6
    gemini = ("model", "gemini-test")
    expected = {
        ("ray_saber_clips_processed_total",): 6,
        ("ray_saber_clips_kept_total",): 3,
        ("ray_saber_media_seconds_total",): 10.75,
        ("ray_saber_clips_rejected_total", ("stage", "probe"), ("reason", "duration_too_short")): 1,
        ("ray_saber_clips_rejected_total", ("stage", "probe"), ("reason", "unreadable_container")): 1,
        ("ray_saber_clips_rejected_total", ("stage", "asr"), ("reason", "wer_above_threshold")): 1,
        ("ray_saber_clips_rejected_total",): 3,
        ("ray_saber_stage_rows_total", ("stage", "probe")): 6,
        ("ray_saber_stage_batch_seconds_count", ("stage", "probe")): 2,
        ("ray_saber_model_requests_total", ("stage", "annotate"), gemini, ("cache", "hit")): 2,
        ("ray_saber_model_requests_total", ("stage", "annotate"), gemini, ("cache", "miss")): 5,
        ("ray_saber_model_requests_total", ("stage", "annotate-repair"), ("cache", "miss")): 1,
        ("ray_saber_model_requests_total", ("cache", "hit"), ("stage", "annotate-repair")): 0,
        ("ray_saber_model_http_calls_total", ("stage", "annotate")): 10,
        ("ray_saber_model_tokens_total", ("stage", "annotate"), ("kind", "prompt")): 200,
        ("ray_saber_model_tokens_total", ("stage", "annotate"), ("kind", "completion")): 40,
        ("ray_saber_model_tokens_total", ("stage", "annotate-repair"), ("kind", "completion")): 20,
        ("ray_saber_model_cost_usd_total", ("stage", "annotate")): 0.04,
        ("ray_saber_model_cost_usd_total", ("stage", "annotate-repair")): 0.014,
        ("ray_saber_model_failures_total", ("stage", "annotate"), ("error", "rate_limited")): 1,
    }
    assert wait_for(metrics_port, expected) == pytest.approx(expected)


@pytest.mark.slow
def test_driver_build_and_trainer_metrics_reach_prometheus(metrics_port):
    monitoring.record_build_start(planned=6, skipped=2)
    row = {"step": 3, "epoch": 0, "loss": 1.25, "lr": 1e-4, "samples_per_s": 8.0, "tokens_per_s": 1200.0,
           "step_s": 0.5}
    monitoring.record_train_step("sft-test", row)
    gauges_only = {k: v for k, v in row.items() if k != "step_s"}
    run = ("run", "sft-test")
    expected = {
        ("ray_saber_build_clips_planned_total",): 6,
        ("ray_saber_build_clips_skipped_total",): 2,
        ("ray_saber_train_step", run): 3,
        ("ray_saber_train_loss", run): 1.25,
        ("ray_saber_train_lr", run): 1e-4,
        ("ray_saber_train_samples_per_s", run): 8.0,
        ("ray_saber_train_tokens_per_s", run): 1200.0,
        ("ray_saber_train_step_seconds_count", run): 1,
    }
    got = wait_for(metrics_port, expected, refresh=lambda: monitoring.record_train_step("sft-test", gauges_only))
    assert got == pytest.approx(expected)


@pytest.mark.slow
def test_the_real_build_reports_its_clips_by_stage_and_reason(metrics_port, small_set, tmp_path):
    from collections import Counter

    from engine.core.config import EngineConfig, load_config
    from engine.dataset.build import run_build

    folder, clips = small_set
    config = load_config(EngineConfig, REPO / "jobs" / "configs" / "demo.yaml",
                         ["asr.enabled=false", f"input={folder}", f"output={tmp_path / 'out'}"])
    # Without the ASR check only the planted bad files are rejected, each at its planted stage and reason.
    bad = Counter((c.expected_stage, c.expected_reason) for c in clips if c.expected_stage not in (None, "asr"))
    delta = {("ray_saber_clips_processed_total",): len(clips), ("ray_saber_clips_kept_total",): len(clips) - len(
        [c for c in clips if c.expected_stage not in (None, "asr")]), ("ray_saber_clips_rejected_total",): sum(
        bad.values()), ("ray_saber_stage_rows_total", ("stage", "probe")): len(clips)}
    delta |= {("ray_saber_clips_rejected_total", ("stage", s), ("reason", r)): n for (s, r), n in bad.items()}
    samples = scrape(metrics_port)  # earlier tests of this module count into the same series
    expected = {key: n + summed(samples, key[0], **dict(key[1:])) for key, n in delta.items()}
    report = run_build(config)
    assert report["input"] == len(clips)
    assert wait_for(metrics_port, expected) == pytest.approx(expected)
