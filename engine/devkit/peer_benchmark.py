"""The engine's probe + technical filter against Data-Juicer's video_duration_filter + video_resolution_filter on
the same clips, with the same thresholds, on the same machine, one worker on each side.

The engine side runs here: ProbeStage (engine.stages.probe) over fresh rows, with the configured isolation (PyAV in
the long-lived media child, `process`, the default) and in this process (`none`). Per clip it stats the file, opens
the container with PyAV, reads the tracks' metadata and decodes the first video frame (its display rotation), then
checks duration, short side and both tracks. The peer side runs in Data-Juicer's own venv
(engine.devkit.peer_data_juicer, started as a subprocess and timed inside it; see that module for its ways). Every
way gets one untimed pass first (imports, the media child, the page cache); then the ways take turns in rounds, the
engine first in even rounds and Data-Juicer first in odd ones (ABBA), so a busy spell hits both sides alike; the
ratio is reported per round. Wall seconds and the CPU seconds of each side's process tree are both reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import psutil

from engine.core.config import MediaConfig
from engine.core.schema import is_alive, new_row
from engine.stages.probe import ProbeStage

PEER_SCRIPT = Path(__file__).with_name("peer_data_juicer.py")
ENGINE_WAYS = ("probe_stage", "probe_stage_in_process")
PEER_WAYS = ("ops_ffmpeg", "ops_av", "executor")


def _tree_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live descendants (the media child)."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return total


def engine_pass(stage: ProbeStage, paths: list[str]) -> dict[str, Any]:
    started, cpu = time.perf_counter(), _tree_cpu_seconds()
    rows = stage([new_row(path) for path in paths])
    seconds, cpu_s = time.perf_counter() - started, _tree_cpu_seconds() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu_s, "kept": [is_alive(row) for row in rows],
            "reasons": [row["reject_reason"] for row in rows],
            "stats": [{"duration": row["duration_s"], "width": row["width"], "height": row["height"]} for row in rows]}


class PeerProcess:
    """engine.devkit.peer_data_juicer under Data-Juicer's Python, driven over stdin/stdout."""

    def __init__(self, python: Path, log_path: Path) -> None:
        self.log = log_path.open("w")
        self.proc = subprocess.Popen([str(python), str(PEER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=log_path.parent)
        self.info = self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ANSWER "):
                return json.loads(line[len("ANSWER "):])
        raise RuntimeError(f"the Data-Juicer peer exited ({self.proc.wait()}); see {self.log.name}")

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")  # no answer: the peer exits
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


def _agreement(engine: dict[str, Any], peer: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    differ = [{"clip": Path(path).name, "engine_kept": e, "engine_reason": reason, "engine_stats": es,
               "peer_kept": p, "peer_stats": ps}
              for path, e, reason, es, p, ps in zip(paths, engine["kept"], engine["reasons"], engine["stats"],
                                                    peer["kept"], peer["stats"], strict=True) if e != p]
    return {"same_verdict": len(paths) - len(differ), "differ": differ}


def benchmark_peer(paths: list[Path], media: MediaConfig, dj_python: Path, work: Path, rounds: int = 4,
                   peer_ways: tuple[str, ...] = PEER_WAYS) -> dict[str, Any]:
    clips = [str(path.resolve()) for path in paths]
    work.mkdir(parents=True, exist_ok=True)
    stages = {"probe_stage": ProbeStage(media),
              "probe_stage_in_process": ProbeStage(media.model_copy(update={"isolation": "none"}))}
    peer = PeerProcess(dj_python, work / "peer.log")
    try:
        peer.call(cmd="setup", paths=clips, min_duration=media.min_duration_s, max_duration=media.max_duration_s,
                  min_side=media.min_short_side, work=str(work / "dj"))
        run = {**{way: (lambda way=way: engine_pass(stages[way], clips)) for way in ENGINE_WAYS},
               **{way: (lambda way=way: peer.call(cmd="run", way=way)) for way in peer_ways}}
        warm = {way: go() for way, go in run.items()}  # untimed
        passes: list[dict[str, dict[str, Any]]] = []
        for r in range(rounds):
            order = [*ENGINE_WAYS, *peer_ways] if r % 2 == 0 else [*peer_ways, *ENGINE_WAYS]
            passes.append({way: run[way]() for way in order})
    finally:
        peer.close()
    return _summary(clips, media, rounds, peer.info, warm, passes, peer_ways)


def _summary(clips: list[str], media: MediaConfig, rounds: int, info: dict[str, Any], warm: dict[str, Any],
             passes: list[dict[str, dict[str, Any]]], peer_ways: tuple[str, ...]) -> dict[str, Any]:
    n = len(clips)
    ways = {}
    for way in (*ENGINE_WAYS, *peer_ways):
        seconds = [p[way]["seconds"] for p in passes]
        cpu = [p[way]["cpu_seconds"] + p[way].get("children_cpu_seconds", 0.0) for p in passes]
        ways[way] = {"side": "engine" if way in ENGINE_WAYS else "data_juicer",
                     "clips_per_s_median": round(n / median(seconds), 2),
                     "clips_per_s_per_round": [round(n / s, 2) for s in seconds],
                     "ms_per_clip_median": round(1000 * median(seconds) / n, 2),
                     "cpu_ms_per_clip_median": round(1000 * median(cpu) / n, 2),
                     "kept": sum(passes[-1][way]["kept"])}
    ratios = {}
    for mine in ENGINE_WAYS:
        for theirs in peer_ways:
            per_round = [p[theirs]["seconds"] / p[mine]["seconds"] for p in passes]
            cpu_round = [(p[theirs]["cpu_seconds"] + p[theirs].get("children_cpu_seconds", 0.0))
                         / p[mine]["cpu_seconds"] for p in passes]
            ratios[f"{mine}_vs_{theirs}"] = {"per_round": [round(x, 2) for x in per_round],
                                             "median": round(median(per_round), 2),
                                             "cpu_median": round(median(cpu_round), 2)}
    agreement = {theirs: _agreement(warm["probe_stage"], warm[theirs], clips) for theirs in peer_ways}
    return {"clips": n, "rounds": rounds, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "thresholds": {"min_duration_s": media.min_duration_s, "max_duration_s": media.max_duration_s,
                           "min_short_side": media.min_short_side},
            "engine": {"python": sys.version.split()[0], "isolation": media.isolation},
            "data_juicer": info, "ways": ways, "speedup": ratios, "agreement_with_probe_stage": agreement,
            "engine_rejects": sorted({r for r in warm["probe_stage"]["reasons"] if r})}
