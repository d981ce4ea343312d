"""SFT throughput and memory: the Ray Train + DeepSpeed recipe against a plain single-process PyTorch loop.

Both train the same tiny model on the same preprocessed records with the same micro-batch, optimizer and
number of optimizer steps, in one benchmark run. Steady-state samples/s is the median over steps (the
first step of each epoch waits for the data pipeline); peak memory is the largest process RSS.
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


def plain_loop(config: SftConfig, examples: list[dict[str, np.ndarray]], steps: int, pad_id: int) -> dict[str, Any]:
    """The baseline: one process, all cores to torch, AdamW, no Ray and no DeepSpeed."""
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
            losses.append(float(loss) * per_step)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return {"samples_per_s": per_step / statistics.median(times), "seconds": sum(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_loss": losses[0], "last_loss": losses[-1]}


def recipe_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady-state figures from the recipe's metrics.jsonl rows."""
    return {"samples_per_s": statistics.median(r["samples_per_s"] for r in rows),
            "seconds": sum(r["step_s"] for r in rows), "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "median_step_split_s": {k: statistics.median(r[k] for r in rows) for k in ("data_s", "compute_s")}}
