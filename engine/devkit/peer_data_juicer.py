"""The peer side of `jobs/benchmark.py peer`: Data-Juicer's video_duration_filter and video_resolution_filter timed on
a list of clips, inside a Data-Juicer environment (its own venv). This file imports nothing of the engine: it runs
as a script under that venv's Python, started and driven by engine.devkit.peer_benchmark.

    /work/venvs/dj/bin/python engine/devkit/peer_data_juicer.py   # then JSON lines on stdin, see serve()

A command per stdin line, an answer per stdout line (prefixed ANSWER, since Data-Juicer may print too):
    {"cmd": "setup", "paths": [...], "min_duration": 0.5, "max_duration": 30, "min_side": 96, "work": DIR}
    {"cmd": "run", "way": "ops_ffmpeg" | "ops_av" | "executor"}
        -> {"seconds", "cpu_seconds", "kept": [bool per clip], "stats": [{duration, width, height} per clip]}
    {"cmd": "quit"}

Ways:
- ops_ffmpeg: the two ops' compute_stats_single / process_single called per sample in this process, the duration
  filter with its default video_backend "ffmpeg" (an ffprobe subprocess per clip, the video stream's duration);
  the resolution filter opens the clip with PyAV (av.open, the first video stream's coded size). A sample the
  duration filter drops is not given to the resolution filter, as Data-Juicer's executor does.
- ops_av: the same with the duration filter's video_backend "av" (PyAV opens the clip; the stream's duration).
- executor: Data-Juicer's DefaultExecutor on a jsonl of the samples (np=1, use_cache false so each run computes,
  default backends), as `dj-process --config` runs it: Hugging Face datasets map/filter per op, then the export.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

VIDEO_TOKEN = "<__dj__video>"


def _ops(config: dict[str, Any], backend: str) -> list[Any]:
    from data_juicer.ops.filter import VideoDurationFilter, VideoResolutionFilter

    side = config["min_side"]  # min(w, h) >= side  <=>  w >= side and h >= side
    return [VideoDurationFilter(min_duration=config["min_duration"], max_duration=config["max_duration"],
                                video_backend=backend),
            VideoResolutionFilter(min_width=side, min_height=side)]


def _stats(sample: dict[str, Any]) -> dict[str, Any]:
    stats = sample["__dj__stats__"]

    def first(key: str) -> float | None:
        values = stats.get(key)
        return float(values[0]) if values is not None and len(values) else None
    return {"duration": first("video_duration"), "width": first("video_width"), "height": first("video_height")}


def run_ops(paths: list[str], ops: list[Any]) -> tuple[list[bool], list[dict[str, Any]]]:
    kept, stats = [], []
    for path in paths:
        sample = {"videos": [path], "text": f"{VIDEO_TOKEN} clip", "__dj__stats__": {}}
        keep = True
        for op in ops:
            sample = op.compute_stats_single(sample)
            keep = bool(op.process_single(sample))
            if not keep:
                break
        kept.append(keep)
        stats.append(_stats(sample))
    return kept, stats


def _executor_config(config: dict[str, Any], work: Path) -> Path:
    samples = work / "samples.jsonl"
    samples.write_text("".join(json.dumps({"videos": [p], "text": f"{VIDEO_TOKEN} clip"}) + "\n"
                               for p in config["paths"]))
    side = config["min_side"]
    lines = ["project_name: peer_benchmark", f"dataset_path: {samples}",
             f"export_path: {work / 'out' / 'kept.jsonl'}", "np: 1", "use_cache: false", "open_tracer: false",
             "process:",
             "  - video_duration_filter:", f"      min_duration: {config['min_duration']}",
             f"      max_duration: {config['max_duration']}",
             "  - video_resolution_filter:", f"      min_width: {side}", f"      min_height: {side}"]
    path = work / "executor.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_executor(config: dict[str, Any], config_path: Path) -> tuple[list[bool], list[dict[str, Any]]]:
    from data_juicer.config import init_configs
    from data_juicer.core import DefaultExecutor

    DefaultExecutor(init_configs(args=["--config", str(config_path)])).run()
    exported = Path(config_path.parent / "out" / "kept.jsonl").read_text().splitlines()
    survivors = {json.loads(line)["videos"][0] for line in exported if line.strip()}
    return [path in survivors for path in config["paths"]], [{} for _ in config["paths"]]


def _timed(run: Any) -> dict[str, Any]:
    started, cpu = time.perf_counter(), os.times()
    kept, stats = run()
    after = os.times()
    cpu_s = (after.user - cpu.user) + (after.system - cpu.system)
    children_s = (after.children_user - cpu.children_user) + (after.children_system - cpu.children_system)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": cpu_s, "children_cpu_seconds": children_s,
            "kept": kept, "stats": stats}


def _way(way: str, config: dict[str, Any], ops: dict[str, list[Any]]) -> Any:
    if way == "executor":
        return lambda: run_executor(config, Path(config["executor_yaml"]))
    return lambda: run_ops(config["paths"], ops[way])


def serve(commands: Any, answer: Any) -> None:
    config: dict[str, Any] = {}
    ops: dict[str, list[Any]] = {}
    for line in commands:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        if command["cmd"] == "setup":
            config = command
            work = Path(config["work"])
            work.mkdir(parents=True, exist_ok=True)
            ops = {"ops_ffmpeg": _ops(config, "ffmpeg"), "ops_av": _ops(config, "av")}
            config["executor_yaml"] = str(_executor_config(config, work))
            reply: dict[str, Any] = {"ok": True}
        else:
            reply = _timed(_way(command["way"], config, ops))
        answer.write("ANSWER " + json.dumps(reply) + "\n")
        answer.flush()


def main() -> int:
    import data_juicer

    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever Data-Juicer prints goes to stderr, not answers
    answer.write("ANSWER " + json.dumps({"ready": True, "data_juicer": data_juicer.__version__,
                                         "python": sys.version.split()[0]}) + "\n")
    answer.flush()
    serve(sys.stdin, answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
