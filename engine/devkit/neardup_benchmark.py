"""What near-duplicate detection costs (jobs/benchmark.py neardup): the fingerprint stage per clip on real decoded
clips, and the global step at scale on synthetic fingerprints of the same size.

The synthetic fingerprints are uniformly random items: real Chromaprint items are less uniform, so real builds see
more candidate pairs (bounded by neardup.max_bucket_clips per item); the index's size and the sort do not change.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine.core import fingerprints
from engine.core.config import EngineConfig, NearDupConfig
from engine.core.schema import new_row
from engine.dataset import neardup
from engine.stages.decode import DecodeStage
from engine.stages.noise import covered_audio
from engine.stages.probe import ProbeStage


def fingerprint_cost(clips: list[Path], config: EngineConfig, repeats: int) -> dict[str, Any]:
    """Milliseconds per clip of each half of the fingerprint stage (best of `repeats` passes) on the kept clips."""
    rows = DecodeStage(config.media)(ProbeStage(config.media)([new_row(str(p)) for p in clips]))
    rows = [r for r in rows if r["status"] == "kept"]
    best = {"frames": float("inf"), "audio": float("inf")}
    for _ in range(repeats):
        for part, run in (("frames", lambda r: fingerprints.frame_hashes(r["frames_jpeg"])),
                          ("audio", lambda r: fingerprints.audio_fingerprint(covered_audio(r)))):
            started = time.perf_counter()
            for row in rows:
                run(row)
            best[part] = min(best[part], (time.perf_counter() - started) * 1000 / max(len(rows), 1))
    return {"clips": len(rows), "mean_duration_s": round(float(np.mean([r["duration_s"] for r in rows])), 2),
            "mean_frames": round(float(np.mean([r["n_frames"] for r in rows])), 1),
            "ms_per_clip": {k: round(v, 2) for k, v in best.items()} | {"total": round(sum(best.values()), 2)}}


def synthetic_clips(n: int, duration_s: float, seed: int = 0) -> pa.Table:
    """`n` kept clips with random fingerprints of a `duration_s` clip (8 frame hashes, its clean audio items)."""
    rng = np.random.default_rng(seed)
    items = max(0, int(duration_s * fingerprints.items_per_second()) - 20)
    return pa.table({
        "clip_id": [f"c{i:08d}" for i in range(n)], "dataset": ["synthetic"] * n, "status": ["kept"] * n,
        "reject_stage": pa.nulls(n, pa.string()), "width": [640] * n, "height": [360] * n,
        "duration_s": [duration_s] * n, "video_desc": ["v"] * n,
        "frame_hashes": [rng.integers(0, 256, 8 * fingerprints.HASH_BYTES, dtype=np.uint8).tobytes() for _ in range(n)],
        "audio_fingerprint": [rng.integers(0, 2**32, items, dtype=np.uint64).astype("<u4").tobytes()
                              for _ in range(n)]})


def _step_at_scale(n: int, duration_s: float, queue: Any) -> None:
    table = synthetic_clips(n, duration_s)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    found = neardup.find_duplicates(table, NearDupConfig(enabled=True))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put({"clips": n, "clip_duration_s": duration_s, "seconds": round(seconds, 2),
               "ms_per_clip": round(seconds * 1000 / n, 4), "columns_mb": round(table.nbytes / 1e6, 1),
               "peak_rss_increase_mb": round((peak - before) / 1024, 1),
               "candidate_pairs": found.stats["candidate_pairs"]})


def step_cost(scales: list[int], duration_s: float) -> list[dict[str, Any]]:
    """The global step at each scale, each in a fresh process so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    results = []
    for n in scales:
        queue = context.Queue()
        process = context.Process(target=_step_at_scale, args=(n, duration_s, queue))
        process.start()
        results.append(queue.get())
        process.join()
    return results
