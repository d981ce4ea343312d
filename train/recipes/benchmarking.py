"""SFT throughput and memory: the Ray Train + DeepSpeed recipe against a plain single-process PyTorch loop.

Both train the same tiny model on the same preprocessed records with the same micro-batch, optimizer and
number of optimizer steps, in one benchmark run. Step time is reported as the mean (what a run of N steps
costs, data waits included) and the median (the steady state); the recipe's waits on data are reported apart: the
first step's (the dataset iterator's start) and those of the steps that open an epoch. Peak memory is the largest
process RSS.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import numpy as np
import torch

from train.core.config import SftConfig
from train.core.modeling import load_thinker, resolve_model_path
from train.data.collate import collate_sed


def plain_loop(config: SftConfig, examples: list[dict[str, np.ndarray]], steps: int, pad_id: int,
               threads: int) -> dict[str, Any]:
    """The baseline: one process, `threads` torch threads, AdamW, no Ray and no DeepSpeed."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {"threads": threads, **_plain_loop(config, examples, steps, pad_id)}
    finally:
        torch.set_num_threads(previous)


def best_plain_loop(config: SftConfig, examples: list[dict[str, np.ndarray]], steps: int, pad_id: int,
                    cpus: int) -> dict[str, Any]:
    """The plain loop with one torch thread and with `cpus`, the faster by mean step time first: on a busy machine a
    multi-threaded torch step can take many times a one-thread one (its threads wait on each other), and the recipe
    is compared with the better of the two."""
    runs = [plain_loop(config, examples, steps, pad_id, threads) for threads in sorted({1, cpus})]
    return sorted(runs, key=lambda run: run["mean_step_s"])


def _plain_loop(config: SftConfig, examples: list[dict[str, np.ndarray]], steps: int, pad_id: int) -> dict[str, Any]:
    model = load_thinker(config.model, resolve_model_path(config.model.path))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.optim.lr)
    per_step = config.optim.global_batch
    times, losses = [], []
    for step in range(steps):
        started = time.perf_counter()
        for i in range(per_step):
            example = examples[(step * per_step + i) % len(examples)]
            loss = model(**collate_sed({k: [v] for k, v in example.items()}, pad_id)).loss / per_step
            loss.backward()
            losses.append(float(loss.detach()) * per_step)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return {**step_times(times, per_step), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_loss": losses[0], "last_loss": losses[-1]}


def step_times(times: list[float], samples_per_step: int) -> dict[str, Any]:
    mean, median = statistics.fmean(times), statistics.median(times)
    return {"mean_step_s": round(mean, 4), "median_step_s": round(median, 4), "seconds": round(sum(times), 3),
            "samples_per_s_mean": round(samples_per_step / mean, 3),
            "samples_per_s_median": round(samples_per_step / median, 3)}


def recipe_summary(rows: list[dict[str, Any]], samples_per_step: int) -> dict[str, Any]:
    """Figures from the recipe's metrics.jsonl rows: step times, the first step's wait on data, and the waits of the
    steps that open an epoch (a row's `epoch` is that of its last micro-batch: a step whose epoch is above the
    previous step's read the first batch of an epoch)."""
    boundaries = [now["data_s"] for before, now in zip(rows, rows[1:], strict=False) if now["epoch"] > before["epoch"]]
    return {**step_times([r["step_s"] for r in rows], samples_per_step),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "first_step_data_s": rows[0]["data_s"],
            "epoch_boundary_data_s": {"count": len(boundaries), "max": max(boundaries, default=0.0),
                                      "mean": round(statistics.fmean(boundaries), 4) if boundaries else 0.0},
            "median_step_split_s": {k: statistics.median(r[k] for r in rows) for k in ("data_s", "compute_s")},
            "mean_step_split_s": {k: round(statistics.fmean(r[k] for r in rows), 4) for k in ("data_s", "compute_s")}}


def ratios(baseline: dict[str, Any], recipe: dict[str, Any]) -> dict[str, float]:
    """Recipe throughput over the baseline's (the same samples per step on both sides): above 1, the recipe is faster;
    peak memory the other way round."""
    return {"mean_step_ratio": round(baseline["mean_step_s"] / recipe["mean_step_s"], 3),
            "median_step_ratio": round(baseline["median_step_s"] / recipe["median_step_s"], 3),
            "peak_rss_ratio": round(recipe["peak_rss_mb"] / baseline["peak_rss_mb"], 3)}
