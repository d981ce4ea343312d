"""The SABER-Test selection and the training ids at any size: computed in Arrow on a few columns of every candidate
(clip id, recording, speaker) and of the relation verdicts, with no Python row per clip and no annotation text.
engine.dataset.holdout then streams the records themselves from clips/ part by part (write_split_records), so the
step after the stream holds a few columns of the clip table, never its texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.core.failures import FINAL, GAVE_UP
from engine.dataset.saber_test import SaberTestCandidate, select_test_table

# What the selection reads of each candidate (kept, annotated clips).
PLAN_COLUMNS = ("clip_id", "source_uri", "source_video", "speaker")


@dataclass
class SplitPlan:
    train_ids: pa.Array  # the SED training records' clip ids, in the candidates' order
    test: list[SaberTestCandidate] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def verdict_table(relations: pa.Table) -> pa.Table:
    """One verdict a clip, as engine.dataset.holdout.latest_verdicts chooses it: the successful one if any, else a
    finished failure, else the latest retryable one (rows of older builds without `failure` count as retryable)."""
    ok = pc.fill_null(pc.equal(relations.column("verdict"), "ok"), False)
    finished = pc.or_(ok, pc.fill_null(pc.is_in(relations.column("failure"), pa.array([FINAL, GAVE_UP])), False))
    at = pc.fill_null(relations.column("judged_at").cast(pa.int64()), 0)
    ranked = pa.table({"clip_id": relations.column("clip_id"), "ok": ok, "finished": finished, "at": at,
                       "row": pa.array(range(relations.num_rows), pa.int64())})
    order = pc.sort_indices(ranked, [("ok", "ascending"), ("finished", "ascending"), ("at", "ascending")])
    ranked = ranked.take(order).append_column("rank", pa.array(range(relations.num_rows), pa.int64()))
    last = ranked.group_by("clip_id").aggregate([("rank", "max")]).column("rank_max")  # each clip's last row
    rows = ranked.column("row").take(last)
    return relations.take(rows.take(pc.sort_indices(rows)))  # in the order of relations/


def finished_ids(verdicts: pa.Table) -> pa.Array:
    """Clips whose verdict is final: judged, or failed for good (engine.core.failures)."""
    done = pc.or_(pc.equal(verdicts.column("verdict"), "ok"),
                  pc.fill_null(pc.is_in(verdicts.column("failure"), pa.array([FINAL, GAVE_UP])), False))
    return verdicts.column("clip_id").filter(done).combine_chunks()


def _recordings(candidates: pa.Table, merged: dict[str, str]) -> tuple[pa.Array, pa.Array]:
    """(own recording, recording as held out): source_video, else the clip's URI; a near-duplicate group's recordings
    joined into the one standing for it (engine.dataset.neardup.recording_groups)."""
    video, uri = candidates.column("source_video").combine_chunks(), candidates.column("source_uri").combine_chunks()
    own = pc.if_else(pc.fill_null(pc.not_equal(video, ""), False), video, uri)
    if not merged:
        return own, own
    index = pc.index_in(own, value_set=pa.array(list(merged), pa.string()))
    return own, pc.if_else(pc.is_valid(index), pa.array(list(merged.values()), pa.string()).take(index), own)


def _distinct(values: pa.Array, mask: pa.Array) -> set[str]:
    return {v for v in pc.unique(values.filter(mask)).to_pylist() if v}


def plan_splits(candidates: pa.Table, verdicts: pa.Table | None, per_subset: int, hold_out_speakers: bool = False,
                merged_recordings: dict[str, str] | None = None) -> SplitPlan:
    """engine.dataset.holdout.make_splits's selection on PLAN_COLUMNS of the candidates and verdict_table's rows: the
    test clips, the training ids (no recording, and with `hold_out_speakers` no speaker, on both sides) and the
    figures for report.json."""
    ids = candidates.column("clip_id").combine_chunks()
    if verdicts is None:
        return SplitPlan(ids, stats={"sed_records": len(ids), "sed_train": len(ids)})
    merged = merged_recordings or {}
    own, video = _recordings(candidates, merged)
    speaker = candidates.column("speaker").combine_chunks()
    judged = verdicts.filter(pc.is_in(verdicts.column("clip_id"), value_set=ids))
    ok = judged.filter(pc.equal(judged.column("verdict"), "ok"))
    at = pc.index_in(ok.column("clip_id"), value_set=ids)
    chosen = select_test_table(pa.table({
        "clip_id": ok.column("clip_id"), "source_video": video.take(at), "relation": ok.column("av_relation"),
        "intensity": ok.column("av_intensity"), "reason": ok.column("av_reason"), "speaker": speaker.take(at)}),
        per_subset)
    test_ids = pa.array([c.clip_id for c in chosen], pa.string())
    test_videos = pa.array(sorted({c.source_video for c in chosen}), pa.string())
    train = pc.invert(pc.fill_null(pc.is_in(video, value_set=test_videos), False))
    if hold_out_speakers:
        test_speakers = pa.array(sorted({c.speaker for c in chosen if c.speaker}), pa.string())
        train = pc.and_(train, pc.invert(pc.fill_null(pc.is_in(speaker, value_set=test_speakers), False)))
    is_test = pc.is_in(ids, value_set=test_ids)
    held_out = pc.and_(pc.invert(is_test), pc.invert(train))
    same_video = pc.sum(pc.and_(held_out, pc.is_in(video, value_set=test_videos))).as_py() or 0
    relation_of = ok.column("av_relation")
    stats = {
        "sed_records": len(ids), "sed_train": pc.sum(train).as_py() or 0,
        "saber_test": {"consistent": sum(c.relation == "consistent" for c in chosen),
                       "inconsistent": sum(c.relation == "inconsistent" for c in chosen),
                       "requested_per_subset": per_subset},
        "held_out_same_video": same_video, "held_out_same_speaker": (pc.sum(held_out).as_py() or 0) - same_video,
        "groups": {"by": ["source_video", "speaker"] if hold_out_speakers else ["source_video"],
                   "recordings": _shared(_distinct(video, is_test), _distinct(video, train)),
                   "speakers": {**_shared(_distinct(speaker, is_test), _distinct(speaker, train)),
                                "test_clips_without_speaker": sum(not c.speaker for c in chosen)}},
        "relations": {"judged": judged.num_rows, "consistent": pc.sum(pc.equal(relation_of, "consistent")).as_py() or 0,
                      "inconsistent": pc.sum(pc.equal(relation_of, "inconsistent")).as_py() or 0,
                      "failed": _counts(judged.filter(pc.invert(pc.equal(judged.column("verdict"), "ok")))
                                        .column("fail_reason"))},
    }
    if merged:  # only when near-duplicates joined recordings: a build without any reports as before
        linked = pa.array(sorted(set(merged) | set(merged.values())), pa.string())
        is_linked = pc.is_in(own, value_set=linked)
        sides = _distinct(video, pc.and_(is_test, is_linked)), _distinct(video, pc.and_(train, is_linked))
        stats["near_duplicates"] = {"linked_recordings": len(_distinct(own, is_linked)),
                                    "groups_in_test": len(sides[0]), "groups_in_train": len(sides[1]),
                                    "shared": len(sides[0] & sides[1])}
    return SplitPlan(ids.filter(train), chosen, stats)


def _shared(test: set[str], train: set[str]) -> dict[str, int]:
    return {"test": len(test), "train": len(train), "shared": len(test & train)}


def _counts(values: pa.ChunkedArray) -> dict[Any, int]:
    """Counter(values).most_common() as a dict: by count, ties in order of first appearance."""
    if not len(values):
        return {}
    pairs = [(c["values"], c["counts"]) for c in pc.value_counts(values.combine_chunks()).to_pylist()]
    return dict(sorted(pairs, key=lambda p: -p[1]))
