"""A simulated clip table at cluster scale, and the build's global step after the stream measured on it.

`write_table` writes OUT/clips/ (CLIP_SCHEMA, N rows in parts of `part_rows`, as a long build's flushes leave it) with
realistic columns: the six annotation texts (~300 characters each), transcript, description, provenance JSON,
fingerprints (64 B of frame hashes, ~440 B of audio items), ~15% of the clips rejected across the stages; relations/
with a verdict for every annotated clip (as if the relation judge had run, so the step only selects: no model is
called); a few retryable failures in attempts/clips/; and a curation file marking 0.2% of the clips. No media bytes:
clips/ never holds them.

`measure` runs engine.dataset.build.finish_build, the real step (near-duplicates when asked, curation, report.json,
the SABER-Test selection and sed/ split, the exports, the card), in a fresh process, and reports its peak RSS
(getrusage), the RSS before it, its seconds in all and per 100K rows, and the seconds of its phases.

Measured on this project's 2-core machine (busy, shared with other sessions), 600K rows in 600 parts, near-duplicates
off: 148 s (24.7 s per 100K rows) and 1.09 GB peak RSS, 0.24 GB of it the imports; 83% of the time writes the 507K
SED records (sed/ Parquet and both exports' JSON Lines). The step as it was (whole clip table in memory, rows as
Python dicts) took 412 s and 11.7 GB on the same table; at 100K rows 46 s and 2.2 GB, now 16 s and 0.68 GB.

    python -m engine.devkit.scale_sim --rows 600000 --out /tmp/sim600k        # write (once) and measure
    python -m engine.devkit.scale_sim --rows 600000 --out /tmp/sim600k --neardup
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.core.parts import write_parquet_whole
from engine.core.schema import ANNOTATION_FIELDS, CLIP_SCHEMA, clip_id_for

# engine.dataset.build's functions timed as phases of the step (those a version of it lacks are skipped).
PHASES = ("mark_near_duplicates", "read_clip_table", "read_light_table", "curate", "build_report",
          "write_training_splits", "write_report", "write_card")
CORPORA = ("meld", "crema-d", "ravdess", "mer2023", "cmu-mosei", "iemocap", "mead", "ch-sims", "dfew", "memor")
# Rejection rates by stage (reason), roughly a real build's funnel: ~85% kept.
REJECTIONS = (("annotation", "annotation_invalid", 0.01), ("probe", "duration_too_long", 0.04),
              ("decode", "decode_failed", 0.01), ("noise", "snr_too_low", 0.03), ("asr", "wer_above_threshold", 0.04),
              ("consistency", "description_mismatch", 0.02))
VOCABULARY = ("the speaker frowns slightly while looking down voice trembles pace slows pitch rises tense shoulders "
         "a quiet office warm light she he smiles laughs sighs raises eyebrows leans forward crossed arms loud "
         "calm angry sad happy surprised fearful disgusted neutral tone steady intensity moderate high low says "
         "that it was fine but the words sound forced")


def _pool(rng: np.random.Generator, size: int, words: int) -> pa.Array:
    vocabulary = VOCABULARY.split()
    return pa.array([" ".join(rng.choice(vocabulary, words)) for _ in range(size)], pa.string())


def _texts(rng: np.random.Generator, pool: pa.Array, n: int) -> pa.Array:
    """n texts of two pool sentences each (~300 characters): distinct enough that Parquet stores them as text."""
    a, b = (pool.take(pa.array(rng.integers(0, len(pool), n))) for _ in range(2))
    return pc.binary_join_element_wise(a, b, ". ")


def _part(start: int, n: int, rng: np.random.Generator, pool: pa.Array) -> pa.Table:
    index = np.arange(start, start + n)
    corpus = np.array(CORPORA)[index % len(CORPORA)]
    uris = [f"s3://sim-bucket/{c}/clip{i:07d}.mp4" for c, i in zip(corpus, index, strict=True)]
    status = np.full(n, "kept", object)
    stage, reason = np.full(n, None, object), np.full(n, None, object)
    draw = rng.random(n)
    edge = 0.0
    for name, why, rate in REJECTIONS:
        hit = (draw >= edge) & (draw < edge + rate)
        status[hit], stage[hit], reason[hit] = "rejected", name, why
        edge += rate
    rejected = status == "rejected"
    annotated = stage != "annotation"
    columns: dict[str, Any] = {
        "clip_id": [clip_id_for(u) for u in uris], "source_uri": uris, "dataset": corpus, "lang": "en",
        "label": np.array(["happy", "sad", "angry", "neutral", "fear"])[index % 5],
        "source_video": [f"s3://sim-bucket/{c}/rec{i // 4:07d}" for c, i in zip(corpus, index, strict=True)],
        "speaker": [f"{c}-spk{i % 500:03d}" for c, i in zip(corpus, index, strict=True)],
        "status": status, "reject_stage": stage, "reject_reason": reason,
        "reject_detail": np.where(rejected, "measured value outside the configured range", None),
        "failure": np.where(rejected, "final", None), "attempts": np.ones(n, np.int32),
        "duration_s": rng.uniform(1.0, 12.0, n), "width": np.full(n, 1280, np.int32),
        "height": np.full(n, 720, np.int32), "fps": np.full(n, 25.0), "has_video": np.ones(n, bool),
        "has_audio": np.ones(n, bool), "video_codec": "h264", "audio_codec": "aac",
        "n_frames": np.full(n, 16, np.int32),
        "snr_db": rng.normal(25, 6, n), "asr_wer": rng.uniform(0, 0.4, n),
        "frame_hashes": [rng.bytes(64) for _ in range(n)], "audio_fingerprint": [rng.bytes(440) for _ in range(n)],
        "asr_text": _texts(rng, pool, n), "description": _texts(rng, pool, n),
        "provenance": json.dumps({"annotate": "gemini-2.5-pro annotate@3f2a9c01", "describe": "Qwen2.5-VL-7B "
                                  "describe@9b1e77d0", "consistency": "embedding all-MiniLM-L6-v2"}),
        "run_id": "sim", "processed_at": pa.array(np.full(n, 1_767_000_000_000), pa.timestamp("ms", tz="UTC")),
    }
    for field in ANNOTATION_FIELDS:
        columns[field] = pc.if_else(pa.array(annotated), _texts(rng, pool, n), pa.nulls(n, pa.string()))
    arrays = {k: v if isinstance(v, pa.Array | pa.ChunkedArray) else
              pa.array(v if not isinstance(v, str) else [v] * n, CLIP_SCHEMA.field(k).type) for k, v in columns.items()}
    return pa.table({f.name: arrays.get(f.name, pa.nulls(n, f.type)) for f in CLIP_SCHEMA}, schema=CLIP_SCHEMA)


def _relations(clips: pa.Table, rng: np.random.Generator) -> pa.Table:
    from engine.dataset.holdout import RELATION_SCHEMA

    # Every annotated clip, rejected ones too: a curator's keep makes one a candidate, and it must not need the judge.
    kept = clips.filter(pc.is_valid(clips.column("video_desc")))
    n = kept.num_rows
    values = {"clip_id": kept.column("clip_id"), "source_video": kept.column("source_video"),
              "verdict": pa.array(["ok"] * n), "av_intensity": pa.array(rng.integers(0, 11, n), pa.int32()),
              "av_relation": pa.array(np.where(rng.random(n) < 0.7, "consistent", "inconsistent")),
              "av_reason": pa.array(["the face and the voice carry the same strain"] * n),
              "judge": pa.array(["sim"] * n), "run_id": pa.array(["sim"] * n),
              "judged_at": pa.array(np.full(n, 1_767_000_000_000), pa.timestamp("ms", tz="UTC"))}
    return pa.table({f.name: values.get(f.name, pa.nulls(n, f.type)) for f in RELATION_SCHEMA}, schema=RELATION_SCHEMA)


def write_table(output: str, rows: int, part_rows: int = 1000, seed: int = 0) -> dict[str, int]:
    """The simulated build output under `output` (local folder): clips/, relations/, attempts/clips/, curation.jsonl."""
    from engine.dataset.curation import CurationMark, append_mark
    from engine.dataset.ledger import AttemptLedger

    rng = np.random.default_rng(seed)
    pool = _pool(rng, 2048, 22)
    ledger = AttemptLedger(output, "clips", "sim", max_attempts=3)
    marks = 0
    for number, start in enumerate(range(0, rows, part_rows)):
        table = _part(start, min(part_rows, rows - start), rng, pool)
        write_parquet_whole(str(Path(output, "clips")), f"part-sim-{number:05d}.parquet", table)
        write_parquet_whole(str(Path(output, "relations")), f"part-sim-{number:05d}.parquet", _relations(table, rng))
        ledger.add(f"pending{number:07d}", "annotate", "api_error", "HTTP 503")  # one clip a part waits for a rerun
        for cid in table.column("clip_id").to_pylist()[::500]:  # 0.2% marked by a curator
            append_mark(str(Path(output, "curation.jsonl")), CurationMark(cid, "drop" if marks % 2 else "keep"))
            marks += 1
    ledger.flush()
    return {"rows": rows, "parts": -(-rows // part_rows), "curation_marks": marks}


def sim_config(output: str, neardup: bool, per_subset: int = 900) -> Any:
    """Default stages, SABER-Test on (its judge configured but never called: every candidate has a verdict)."""
    from engine.core.config import EngineConfig

    judge = {"enabled": True, "backend": {"kind": "http", "http": {"base_url": "http://127.0.0.1:9", "model": "sim"}}}
    return EngineConfig.model_validate({
        "input": output, "output": output, "curation": str(Path(output, "curation.jsonl")),
        "neardup": {"enabled": neardup}, "saber_test": {"enabled": True, "per_subset": per_subset, "judge": judge}})


@contextmanager
def _timed(module: Any, names: tuple[str, ...], seconds: dict[str, float]) -> Iterator[None]:
    """Wraps module-level functions so that their seconds add up in `seconds` (the phases of the step), and puts
    the originals back after."""
    originals = {name: getattr(module, name) for name in names if hasattr(module, name)}
    for name, original in originals.items():
        def wrapper(*args: Any, _f: Callable[..., Any] = original, _n: str = name, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                seconds[_n] = round(seconds.get(_n, 0.0) + time.perf_counter() - started, 3)

        setattr(module, name, wrapper)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


@contextmanager
def _no_judge(build: Any) -> Iterator[None]:
    """The relation judge replaced by an error: every candidate has a verdict, so the step must not call it."""
    def judge(*_: Any) -> None:
        raise RuntimeError("the simulation calls no relation judge: a candidate has no verdict in relations/")

    original, build.judge_relations = build.judge_relations, judge
    try:
        yield
    finally:
        build.judge_relations = original


def measure(output: str, neardup: bool = False, per_subset: int = 900) -> dict[str, Any]:
    """finish_build on the table under `output`, in this process: call it in a fresh one (see main)."""
    import psutil

    from engine.dataset import build
    from engine.dataset.ledger import AttemptLedger

    config = sim_config(output, neardup, per_subset)
    phases: dict[str, float] = {}
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    with _timed(build, PHASES, phases), _no_judge(build):
        report = build.finish_build(config, {"run_id": "sim-measure"}, AttemptLedger(output, "clips", "sim-m", 3))
    seconds = time.perf_counter() - started
    rows = report["input"]
    return {"rows": rows, "seconds": round(seconds, 2), "s_per_100k": round(seconds / rows * 1e5, 2),
            "rss_before_mb": round(before / 2**20), "peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024), "phases_s": phases,
            "kept": report["kept"], "splits": {k: report["splits"].get(k) for k in ("sed_records", "sed_train")},
            "pending": report["retry"]["pending"], "curation": {k: report.get("curation", {}).get(k)
                                                                 for k in ("marked", "dropped")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="clips in the simulated table")
    parser.add_argument("--part-rows", type=int, default=1000, help="rows per clips/ part file")
    parser.add_argument("--out", required=True, help="local folder (written once; reused when it holds clips/)")
    parser.add_argument("--neardup", action="store_true", help="run the near-duplicate step too (random prints)")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)  # the fresh child process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.measure_only:
        print(json.dumps(measure(args.out, args.neardup)))
        return 0
    if not Path(args.out, "clips").exists():
        started = time.perf_counter()
        print(json.dumps({**write_table(args.out, args.rows, args.part_rows), "write_s": round(time.perf_counter() -
                                                                                                 started, 1)}))
    child = [sys.executable, "-m", "engine.devkit.scale_sim", "--out", args.out, "--measure-only",
             *(["--neardup"] if args.neardup else [])]
    return subprocess.run(child, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
