"""Which clips become CA-DPO queries: a subset of the SED training records balanced between the relation
judge's consistent and inconsistent clips (paper Sec. IV-B).

The pool is the engine's `sed/` table, so SABER-Test clips (and their recordings) are never queries. Each
record needs an `ok` verdict in `relations/` (clips without one are skipped and counted) and its annotation
in `clips/` (the judge grades against it). Within a relation, clips are taken in the order of
sha256(f"{seed}:{clip_id}"): deterministic for a seed, and stable as the pool grows (a new clip only
displaces the clips ranked after it).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.core import storage
from engine.core.schema import ANNOTATION_FIELDS
from engine.core.sed import SED_SCHEMA
from engine.dataset.holdout import latest_verdicts, read_relations
from engine.dataset.writer import read_clip_table, read_parts
from train.preferences.avem_data import emotion_of
from train.preferences.config import SelectionConfig
from train.preferences.schema import empty_query

RELATIONS = ("consistent", "inconsistent")
CLIP_COLUMNS = ("clip_id", "status", "label", *ANNOTATION_FIELDS)


@dataclass
class EngineTables:
    sed: list[dict[str, Any]]
    verdicts: dict[str, dict[str, Any]]  # clip_id -> latest verdict (engine.dataset.holdout.latest_verdicts)
    clips: dict[str, dict[str, Any]]  # clip_id -> kept, annotated clip row (CLIP_COLUMNS)


@dataclass
class Selection:
    queries: list[dict[str, Any]]  # QUERY_SCHEMA rows, consistent first, each relation in rank order
    stats: dict[str, Any] = field(default_factory=dict)
    # The swap-clip pool (AVEm): every SED record with an annotation, verdict or not.
    pool: list[dict[str, Any]] = field(default_factory=list)


def load_engine_tables(engine_output: str) -> EngineTables:
    sed = read_parts(storage.join(engine_output, "sed"), SED_SCHEMA).to_pylist()
    if not sed:
        raise FileNotFoundError(f"engine_output: no SED records in {storage.join(engine_output, 'sed')}")
    verdicts = latest_verdicts(read_relations(engine_output))
    clips = {row["clip_id"]: row for row in read_clip_table(engine_output, CLIP_COLUMNS).to_pylist()
             if row["status"] == "kept" and row["video_desc"]}
    return EngineTables(sed, verdicts, clips)


def selection_rank(seed: int, clip_id: str) -> str:
    return hashlib.sha256(f"{seed}:{clip_id}".encode()).hexdigest()


def query_row(record: dict[str, Any], verdict: dict[str, Any], clip: dict[str, Any], round_: int) -> dict[str, Any]:
    return empty_query(
        clip_id=record["clip_id"], source_uri=record["source_uri"], source_video=record["source_video"],
        dataset=record["dataset"], lang=record["lang"], system=record["system"], prompt=record["prompt"],
        av_relation=verdict["av_relation"], av_intensity=verdict["av_intensity"],
        emotion=emotion_of(clip.get("label"), clip.get("sentiment_analysis")), round=round_,
        **{name: clip[name] for name in ANNOTATION_FIELDS})


def usable_records(tables: EngineTables, round_: int) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Query rows for every SED record with an ok verdict and an annotation; the rest counted by reason."""
    rows, skipped = [], Counter()
    for record in tables.sed:
        verdict = tables.verdicts.get(record["clip_id"])
        if verdict is None:
            skipped["no_verdict"] += 1
        elif verdict["verdict"] != "ok":
            skipped["failed_verdict"] += 1
        elif verdict["av_relation"] not in RELATIONS:
            skipped["unknown_relation"] += 1
        elif record["clip_id"] not in tables.clips:
            skipped["no_annotation"] += 1
        else:
            rows.append(query_row(record, verdict, tables.clips[record["clip_id"]], round_))
    return rows, skipped


def select_queries(tables: EngineTables, config: SelectionConfig, round_: int) -> Selection:
    pool, skipped = usable_records(tables, round_)
    by_relation = {rel: sorted((r for r in pool if r["av_relation"] == rel),
                               key=lambda r: selection_rank(config.seed, r["clip_id"])) for rel in RELATIONS}
    available = {rel: len(rows) for rel, rows in by_relation.items()}
    counts = {rel: n if config.per_relation is None else min(config.per_relation, n) for rel, n in available.items()}
    if config.balanced:
        counts = dict.fromkeys(RELATIONS, min(counts.values()))
    queries = [row for rel in RELATIONS for row in by_relation[rel][:counts[rel]]]
    stats = {"sed_records": len(tables.sed), "skipped": dict(sorted(skipped.items())), "available": available,
             "requested_per_relation": config.per_relation, "balanced": config.balanced, "seed": config.seed,
             "selected": counts}
    return Selection(queries, stats, swap_pool(tables))


def swap_pool(tables: EngineTables) -> list[dict[str, Any]]:
    """clip_id, source_uri and emotion of every annotated SED record."""
    return [{"clip_id": r["clip_id"], "source_uri": r["source_uri"],
             "emotion": emotion_of(tables.clips[r["clip_id"]].get("label"),
                                   tables.clips[r["clip_id"]].get("sentiment_analysis"))}
            for r in tables.sed if r["clip_id"] in tables.clips]
