"""The capacity plan's input and output: key=value overrides from jobs/benchmark.py results, and the plan as a table
(engine.ops.capacity computes it)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.ops.capacity import Plan, PlanConfig


def overrides_from_benchmark(path: str | Path) -> list[str]:
    """key=value overrides from a jobs/benchmark.py result: the media chain's clips/s and cores (engine.json), or
    the API stages' window_efficiency (models.json: the `after` run, as the engine runs HTTP pools)."""
    results = json.loads(Path(path).read_text())
    if results.get("benchmark") == "models":
        efficiency = results["runs"]["after"]["window_efficiency"]
        return [f"{stage}.window_efficiency={efficiency}" for stage in ("annotate", "consistency", "saber_test")]
    return media_overrides_from_benchmark(path)


def media_overrides_from_benchmark(path: str | Path) -> list[str]:
    """key=value overrides taking the media chain's clips/s and cores from a jobs/benchmark.py engine.json."""
    results = json.loads(Path(path).read_text())
    media = next((run for run in results["runs"] if run["stages"] == "media"), None)
    if media is None:
        raise ValueError(f"{path}: no media-only run in 'runs'")
    return [f"media.benchmark_clips_per_s={media['baseline']['clips_per_s']}",
            f"media.benchmark_cores={results['cpus']}"]


def format_plan(result: Plan, config: PlanConfig) -> str:
    nodes = config.nodes
    lines = [f"SABER capacity plan: {result.clips:,} input clips -> {result.kept:,.0f} kept",
             f"nodes: cpu {nodes.cpu.instance} {nodes.cpu.cpus} CPUs ${nodes.cpu.usd_per_hour}/h, "
             f"gpu {nodes.gpu.instance} {nodes.gpu.gpus} GPUs ${nodes.gpu.usd_per_hour}/h, "
             f"head {nodes.head.instance} ${nodes.head.usd_per_hour}/h (prices are assumptions: edit them)",
             "",
             f"{'stage':<12}{'node':<6}{'clips in':>10}  {'unit cost':<44}{'node-h':>9}{'wall-h':>8}"
             f"{'node $':>10}{'API $':>11}{'total $':>11}"]
    for s in result.stages:
        lines.append(f"{s.stage:<12}{s.node:<6}{s.clips_in:>10,.0f}  {s.unit_cost:<44}{s.node_hours:>9.1f}"
                     f"{s.wall_hours:>8.1f}{s.node_usd:>10,.0f}{s.api_usd:>11,.0f}{s.total_usd:>11,.0f}")
    lines += [f"{'total':<72}{result.node_hours:>9.1f}{'':>8}{result.node_usd:>10,.0f}{result.api_usd:>11,.0f}"
              f"{result.total_usd:>11,.0f}",
              "",
              f"build wall time ~{result.build_wall_hours:.1f} h: the streamed stages run concurrently (the SABER-Test "
              f"judge among them unless saber_test.in_stream=false), the slowest ({result.bottleneck}) sets the pace"]
    return "\n".join(lines)
