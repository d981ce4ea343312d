"""Engine throughput: the Ray Data plan against a plain sequential loop over the same stage objects.

Both sides do identical work per clip (the same stage classes, the same config), on the same clips, in
one process run, so the ratio says what the distribution buys on this machine and nothing else.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import pyarrow as pa
import ray

from engine.config import EngineConfig
from engine.pipeline import build_plan, media_stages, source_to_rows
from engine.schema import is_alive
from engine.sources import list_source
from engine.stages.asr import AsrWerFilterStage


@dataclass(frozen=True)
class Throughput:
    name: str
    clips: int
    seconds: float
    media_seconds: float

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def media_seconds_per_s(self) -> float:
        return self.media_seconds / self.seconds

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self) | {"clips_per_s": round(self.clips_per_s, 3),
                               "media_seconds_per_s": round(self.media_seconds_per_s, 3)}


def _media_seconds(rows: list[dict]) -> float:
    return sum(r["duration_s"] or 0.0 for r in rows)


def sequential(source: pa.Table, config: EngineConfig, with_asr: bool, asr_threads: int | None = None) -> Throughput:
    """The baseline: one process, one clip after another, stages built once.

    Model loading is inside the timer, as it is for the engine (its actors load models while it runs).

    `asr_threads` lets the baseline's Whisper use several cores itself (CTranslate2 intra-op threads),
    the strongest single-process loop on a multi-core machine.
    """
    started = time.perf_counter()
    stages = [factory() for factory in media_stages(config)]
    asr_config = config.asr.model_copy(update={"cpu_threads": asr_threads or config.asr.cpu_threads})
    asr = AsrWerFilterStage(asr_config) if with_asr else None
    done = []
    for row in source_to_rows(source):
        rows = [row]
        for stage in stages:
            rows = stage(rows)
        rows[0].pop("_media", None)
        if asr is not None and is_alive(rows[0]):
            rows = asr(rows)
        done += rows
    name = f"sequential{'+asr' if with_asr else ''}{f' ({asr_threads} threads)' if asr_threads else ''}"
    return Throughput(name, len(done), time.perf_counter() - started, _media_seconds(done))


def distributed(source: pa.Table, config: EngineConfig, with_asr: bool) -> Throughput:
    """The engine's plan on the running Ray, drained to the driver like build_saber does."""
    config = config.model_copy(update={"asr": config.asr.model_copy(update={"enabled": with_asr})})
    started = time.perf_counter()
    rows = []
    for batch in build_plan(source, config).iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.select(["duration_s"]).to_pylist()
    return Throughput(f"ray_data{'+asr' if with_asr else ''}", len(rows), time.perf_counter() - started,
                      _media_seconds(rows))


def benchmark_engine(config: EngineConfig, repeats: int = 1) -> dict:
    source = list_source(config.input, config.dataset, config.lang, config.source_video_pattern)
    if config.limit:
        source = source.slice(0, config.limit)
    started = time.perf_counter()
    ray.init(address=config.ray_address, ignore_reinit_error=True)
    ray_start = time.perf_counter() - started
    results: dict = {"clips": source.num_rows, "ray_start_seconds": round(ray_start, 2),
                     "cpus": ray.cluster_resources().get("CPU"), "runs": []}
    cores = os.cpu_count() or 1
    for with_asr in (False, True):
        for _ in range(repeats):
            base = sequential(source, config, with_asr)
            engine = distributed(source, config, with_asr)
            run = {"stages": "media+asr" if with_asr else "media", "baseline": base.as_dict(),
                   "engine": engine.as_dict(), "speedup": round(engine.clips_per_s / base.clips_per_s, 3)}
            if with_asr and cores > 1:
                threaded = sequential(source, config, with_asr, asr_threads=cores)
                run["baseline_all_threads"] = threaded.as_dict()
                run["speedup_vs_all_threads"] = round(engine.clips_per_s / threaded.clips_per_s, 3)
            results["runs"].append(run)
    return results
