"""Engine and trainer metrics through `ray.util.metrics`, scraped by Prometheus from every node's metrics agent.

Ray exports a custom metric as `ray_<name>` and a counter with a `_total` suffix: `saber_clips_rejected` is the
series `ray_saber_clips_rejected_total{stage=..., reason=...}`. Every process exports its own series (tagged
WorkerId), so dashboards sum over them. Two behaviours of Ray 2.60's OpenTelemetry export shape this module:
a gauge series disappears ~20 s after its last set(), so anything set once per run is a counter; and a
histogram's _sum is estimated from bucket bounds, so use its _count and quantiles, not _sum / _count.

Each recorder is one call at its site and a cheap no-op unless this process is connected to Ray (a driver
after ray.init, or a task/actor). The metric objects are made on first use in each process, never at import:
ray.util.metrics needs a connected worker, and stages must stay importable and testable without Ray.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from engine.core.failures import RETRYABLE

MetricKind = Literal["counter", "gauge", "histogram"]
UNKNOWN = "unknown"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: MetricKind
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The series name Prometheus sees."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("saber_clips_processed", "counter", "Clips finished by the build (one clip-table row each)"),
    MetricSpec("saber_clips_kept", "counter", "Finished clips with status kept"),
    MetricSpec("saber_clips_rejected", "counter", "Finished clips rejected, by stage and reason", ("stage", "reason")),
    MetricSpec("saber_clips_retryable", "counter", "Clips a fault of the world failed (API, storage, memory): not "
               "finished, the next run retries them; by stage and reason", ("stage", "reason")),
    MetricSpec("saber_media_seconds", "counter", "Seconds of media in finished clips (container duration)"),
    MetricSpec("saber_build_clips_planned", "counter", "Clips the build set out to process (after resume skips)"),
    MetricSpec("saber_build_clips_skipped", "counter", "Clips already finished by earlier runs (resume)"),
    MetricSpec("saber_stage_rows", "counter", "Rows through a stage, rejected pass-throughs included", ("stage",)),
    MetricSpec("saber_stage_batch_seconds", "histogram", "Wall time of one batch in one stage", ("stage",), _SECONDS),
    MetricSpec("saber_model_requests", "counter", "Model requests by stage, model and cache=hit|miss",
               ("stage", "model", "cache")),
    MetricSpec("saber_model_http_calls", "counter", "HTTP calls to model APIs, retries included", ("stage", "model")),
    MetricSpec("saber_model_tokens", "counter", "Tokens paid for, kind=prompt|completion", ("stage", "model", "kind")),
    MetricSpec("saber_model_cost_usd", "counter", "Estimated API cost in USD", ("stage", "model")),
    MetricSpec("saber_model_failures", "counter", "Model requests that failed for good, by error",
               ("stage", "model", "error")),
    MetricSpec("saber_train_step", "gauge", "Optimizer steps done", ("run",)),
    MetricSpec("saber_train_loss", "gauge", "Training loss of the last step", ("run",)),
    MetricSpec("saber_train_lr", "gauge", "Learning rate of the last step", ("run",)),
    MetricSpec("saber_train_samples_per_s", "gauge", "Training samples per second (all workers)", ("run",)),
    MetricSpec("saber_train_tokens_per_s", "gauge", "Training tokens per second (all workers)", ("run",)),
    MetricSpec("saber_train_step_seconds", "histogram", "Wall time of one optimizer step", ("run",), _SECONDS),
)
SPECS = {spec.name: spec for spec in METRICS}


# -- pure summaries (no Ray) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipCounts:
    processed: int
    kept: int
    media_seconds: float
    rejected: dict[tuple[str, str], int]
    retryable: dict[tuple[str, str], int] = field(default_factory=dict)  # not finished: the next run retries


def clip_counts(table: pa.Table) -> ClipCounts:
    """Funnel counts of a batch of clip-table rows; a rejected row without a stage or reason counts as unknown. A
    retryable failure (engine.core.failures) is not a rejection: an API outage must not look like bad data."""
    kept = int(pc.sum(pc.equal(table.column("status"), "kept")).as_py() or 0)
    failed = table.filter(pc.equal(table.column("status"), "rejected"))
    retry_mask = (pc.fill_null(pc.equal(failed.column("failure"), RETRYABLE), False)
                  if "failure" in failed.column_names else pa.array([False] * failed.num_rows))
    rejected = _by_stage_and_reason(failed.filter(pc.invert(retry_mask)))
    retryable = _by_stage_and_reason(failed.filter(retry_mask))
    media = pc.sum(table.column("duration_s")).as_py() if "duration_s" in table.column_names else None
    return ClipCounts(table.num_rows, kept, float(media or 0.0), rejected, retryable)


def _by_stage_and_reason(rows: pa.Table) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    grouped = rows.select(["reject_stage", "reject_reason"]).group_by(["reject_stage", "reject_reason"])
    for row in grouped.aggregate([([], "count_all")]).to_pylist():
        key = (row["reject_stage"] or UNKNOWN, row["reject_reason"] or UNKNOWN)
        counts[key] = counts.get(key, 0) + row["count_all"]
    return counts


@dataclass(frozen=True)
class UsageDelta:
    """What one usage tag of a backend did since the previous snapshot."""

    requests: int = 0
    cache_hits: int = 0
    http_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


_NUMBERS = ("requests", "cache_hits", "http_calls", "prompt_tokens", "completion_tokens", "usd")


def usage_delta(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict[str, UsageDelta]:
    """Per-tag increase between two `UsageLog.as_dict()` snapshots (cumulative, see engine/models/backends/base.py)."""
    before = (previous or {}).get("tags", {})
    deltas = {}
    for tag, now in current.get("tags", {}).items():
        old = before.get(tag, {})
        numbers = {name: now.get(name, 0) - old.get(name, 0) for name in _NUMBERS}
        failures = {error: n - old.get("failures", {}).get(error, 0) for error, n in now.get("failures", {}).items()}
        deltas[tag] = UsageDelta(**numbers, failures={e: n for e, n in failures.items() if n > 0})
    return deltas


# -- the per-process registry ------------------------------------------------------------------------------
_lock = threading.Lock()
_registry: dict[str, Any] | None = None
_usage_seen: dict[int, Mapping[str, Any]] = {}


def _metrics() -> dict[str, Any] | None:
    """The metric objects of this process, made on first use; None when the process is not connected to Ray."""
    ray = sys.modules.get("ray")  # never import ray here: a process that has not imported it is not connected
    if ray is None or not ray.is_initialized():
        return None
    global _registry
    with _lock:
        if _registry is None:
            _registry = {spec.name: _make(spec) for spec in METRICS}
        return _registry


def _make(spec: MetricSpec) -> Any:
    from ray.util import metrics

    if spec.kind == "histogram":
        return metrics.Histogram(spec.name, spec.description, list(spec.boundaries), tag_keys=spec.tags)
    cls = metrics.Counter if spec.kind == "counter" else metrics.Gauge
    return cls(spec.name, spec.description, tag_keys=spec.tags)


def _inc(registry: dict[str, Any], name: str, value: float, **tags: str) -> None:
    if value > 0:  # Counter.inc rejects 0, and a zero increment says nothing
        registry[name].inc(value, tags=tags or None)


# -- recorders: one call at each site ---------------------------------------------------------------------
def record_clip_batch(table: pa.Table) -> None:
    """Finished clip-table rows (the driver, per batch written): processed, kept, rejected by stage and reason."""
    registry = _metrics()
    if registry is None or table.num_rows == 0:
        return
    counts = clip_counts(table)
    _inc(registry, "saber_clips_processed", counts.processed)
    _inc(registry, "saber_clips_kept", counts.kept)
    _inc(registry, "saber_media_seconds", counts.media_seconds)
    for (stage, reason), n in counts.rejected.items():
        _inc(registry, "saber_clips_rejected", n, stage=stage, reason=reason)
    for (stage, reason), n in counts.retryable.items():
        _inc(registry, "saber_clips_retryable", n, stage=stage, reason=reason)


def record_build_start(planned: int, skipped: int) -> None:
    """The run's size, so a dashboard can show progress (processed / planned)."""
    registry = _metrics()
    if registry is not None:
        _inc(registry, "saber_build_clips_planned", planned)
        _inc(registry, "saber_build_clips_skipped", skipped)


@contextmanager
def stage_timer(stage: str, rows: int) -> Iterator[None]:
    """`with stage_timer(stage.name, len(rows)): rows = stage(rows)` records the batch's rows and wall time."""
    started = time.perf_counter()
    yield
    registry = _metrics()
    if registry is not None:
        _inc(registry, "saber_stage_rows", rows, stage=stage)
        registry["saber_stage_batch_seconds"].observe(time.perf_counter() - started, tags={"stage": stage})


def record_usage(stage: str, model: str, delta: UsageDelta) -> None:
    """Model usage increments: requests by cache hit/miss, HTTP calls, tokens, cost and failures."""
    registry = _metrics()
    if registry is None:
        return
    _inc(registry, "saber_model_requests", delta.cache_hits, stage=stage, model=model, cache="hit")
    _inc(registry, "saber_model_requests", delta.requests - delta.cache_hits, stage=stage, model=model, cache="miss")
    _inc(registry, "saber_model_http_calls", delta.http_calls, stage=stage, model=model)
    _inc(registry, "saber_model_tokens", delta.prompt_tokens, stage=stage, model=model, kind="prompt")
    _inc(registry, "saber_model_tokens", delta.completion_tokens, stage=stage, model=model, kind="completion")
    _inc(registry, "saber_model_cost_usd", delta.usd, stage=stage, model=model)
    for error, n in delta.failures.items():
        _inc(registry, "saber_model_failures", n, stage=stage, model=model, error=error)


def record_backend_usage(backend: Any) -> None:
    """What a chat backend did since the last call for it (its `usage()` is cumulative), under each request tag
    ("annotate", "annotate-repair", ...) as the stage. Call it after every batch; backends without usage() are
    skipped."""
    if _metrics() is None or not callable(getattr(backend, "usage", None)):
        return
    current = backend.usage()
    with _lock:
        previous = _usage_seen.get(id(backend))
        _usage_seen[id(backend)] = current
    for tag, delta in usage_delta(previous, current).items():
        record_usage(tag or UNKNOWN, str(current.get("model") or getattr(backend, "model_id", UNKNOWN)), delta)


def record_train_step(run: str, row: Mapping[str, Any]) -> None:
    """One optimizer step from the recipe's metrics row (keys of train/recipes/sft.py step_metrics)."""
    registry = _metrics()
    if registry is None:
        return
    tags = {"run": run}
    for key, name in (("step", "saber_train_step"), ("loss", "saber_train_loss"), ("lr", "saber_train_lr"),
                      ("samples_per_s", "saber_train_samples_per_s"), ("tokens_per_s", "saber_train_tokens_per_s")):
        if row.get(key) is not None:
            registry[name].set(float(row[key]), tags=tags)
    if row.get("step_s") is not None:
        registry["saber_train_step_seconds"].observe(float(row["step_s"]), tags=tags)
