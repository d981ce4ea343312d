"""A measured sweep of the engine's resource knobs on one machine: the same clips through the engine's plan once per
combination of settings, against the plain loops of engine.devkit.benchmarking measured in the same process (before
and after the sweep, so drift in the machine's load shows). The defaults in jobs/configs/demo.yaml (the 2-core
laptop preset) come from such a sweep; `python jobs/benchmark.py sweep` repeats it on any machine.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.core.config import EngineConfig
from engine.core.config_base import ConfigError, with_overrides
from engine.devkit.benchmarking import distributed, sequential, start_ray

# The knobs the laptop preset was chosen by (see jobs/configs/demo.yaml): how much CPU a media task reserves, how many
# ASR actors there are, and how many clips an ASR actor packs into one batched Whisper call. (block_rows 16 beat 4 in
# every pairing of the first sweep, so it is left out.)
DEFAULT_GRID = {
    "resources.media_num_cpus": ["0.25", "0.5"],
    "resources.asr_concurrency": ["[1,1]", "[2,2]"],
    "resources.asr_batch_size": ["4", "16"],
}


_VALUE_SPLIT = re.compile(r",(?![^\[]*\])")  # a comma not inside [...]


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """["block_rows=4,16", "resources.asr_concurrency=[1,1],[2,2]"] -> {"block_rows": ["4", "16"],
    "resources.asr_concurrency": ["[1,1]", "[2,2]"]}: commas inside brackets belong to the value."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"--grid {item!r}: expected key=value[,value...]")
        grid[key] = [v for v in _VALUE_SPLIT.split(values) if v]
    return grid


def settings(grid: dict[str, list[str]]) -> list[list[str]]:
    """Every combination of the grid's values as override lists, in the grid's order."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, values, strict=True)] for values in itertools.product(*grid.values())]


def benchmark_sweep(source: pa.Table, config: EngineConfig, grid: dict[str, list[str]], with_asr: bool = True,
                    repeats: int = 1, threads: int = 2) -> dict[str, Any]:
    """clips/s of the engine under each setting (best of `repeats`), the loops' clips/s before and after, and the
    setting with the most clips/s. Every setting is validated before anything runs."""
    combos = [(overrides, with_overrides(config, overrides)) for overrides in settings(grid)]
    results: dict[str, Any] = {"clips": source.num_rows, "stages": "media+asr" if with_asr else "media",
                               **start_ray(config), "grid": grid, "loops": {}, "settings": []}
    results["loops"]["before"] = _loops(source, config, with_asr, threads)
    for overrides, setting in combos:
        runs = [distributed(source, setting, with_asr) for _ in range(repeats)]
        best = max(runs, key=lambda run: run.clips_per_s)
        results["settings"].append({"overrides": overrides, **best.as_dict(),
                                    "all_clips_per_s": [round(run.clips_per_s, 3) for run in runs]})
    results["loops"]["after"] = _loops(source, config, with_asr, threads)
    loop = max(max(side.values()) for side in results["loops"].values())  # the strongest loop seen
    for entry in results["settings"]:
        entry["ratio_to_best_loop"] = round(entry["clips_per_s"] / loop, 3)
    results["best_loop_clips_per_s"] = loop
    results["best"] = max(results["settings"], key=lambda entry: entry["clips_per_s"])["overrides"]
    return results


def _loops(source: pa.Table, config: EngineConfig, with_asr: bool, threads: int) -> dict[str, float]:
    """The plain loop's clips/s: one thread, and (with ASR) Whisper on `threads` threads."""
    loops = {"one_thread": round(sequential(source, config, with_asr).clips_per_s, 3)}
    if with_asr and threads > 1:
        loops[f"whisper_{threads}_threads"] = round(
            sequential(source, config, with_asr, asr_threads=threads).clips_per_s, 3)
    return loops


def plot_sweep(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = sorted(results["settings"], key=lambda entry: entry["clips_per_s"])
    labels = [" ".join(o.split(".")[-1] for o in entry["overrides"]) for entry in entries]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(entries) + 1.6))
    ax.barh(range(len(entries)), [entry["clips_per_s"] for entry in entries], color="tab:blue")
    ax.set_yticks(range(len(entries)), labels, fontsize=8)
    ax.axvline(results["best_loop_clips_per_s"], color="tab:orange", linestyle="--", label="best plain loop")
    ax.set_xlabel("clips/s")
    ax.set_title(f"Engine settings, {results['stages']}, {results['clips']} clips, {results['cpus']:.0f} CPUs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
