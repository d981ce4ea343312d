"""After the stream: relation verdicts, the SABER-Test split, and the training records and exports.

The relation judge's verdicts persist in `relations/` (one part per run, written whole), so a rerun judges
only clips without a verdict yet; `saber_test/`, `sed/` and `exports/` are then rewritten whole from
`clips/` and `relations/`, so every run leaves them consistent with each other.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.core import storage
from engine.core.failures import FINAL, GAVE_UP, RETRYABLE
from engine.core.schema import ANNOTATION_FIELDS
from engine.core.sed import SED_SCHEMA, sed_record
from engine.dataset import exports
from engine.dataset.ledger import settle
from engine.dataset.saber_test import SaberTestCandidate, group_stats, select_test, split_train
from engine.dataset.writer import read_parts, write_parquet_whole
from engine.stages.base import Row

log = logging.getLogger(__name__)

JUDGE_COLUMNS = ("clip_id", "source_video", *ANNOTATION_FIELDS)

RELATION_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_video", pa.string()),
    pa.field("verdict", pa.string(), nullable=False),  # ok | failed
    pa.field("av_relation", pa.string()),
    pa.field("av_intensity", pa.int32()),
    pa.field("av_reason", pa.string()),
    pa.field("fail_reason", pa.string()),
    pa.field("fail_detail", pa.string()),
    # engine.core.failures for a failed verdict: final (unusable after the repair re-ask), retryable (the API failed:
    # judged again by the next build) or gave_up (retryable max_attempts times). relations/ keeps every attempt.
    pa.field("failure", pa.string()),
    pa.field("judge", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("judged_at", pa.timestamp("ms", tz="UTC")),
])

# The test split carries the reference annotation: the six-dimension evaluation judges answers against it.
TEST_SCHEMA = pa.schema([*SED_SCHEMA, pa.field("av_relation", pa.string()), pa.field("av_intensity", pa.int32()),
                         pa.field("av_reason", pa.string()), *[pa.field(k, pa.string()) for k in ANNOTATION_FIELDS]])


class RelationBatch:
    """Actor-pool callable: judge rows (JUDGE_COLUMNS) -> RELATION_SCHEMA rows, one per input row."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.stage = factory()

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = [dict(r, status="kept", reject_stage=None, reject_reason=None, reject_detail=None, provenance=None,
                     av_relation=None, av_intensity=None, av_reason=None) for r in table.to_pylist()]
        judge = f"{self.stage.backend.model_id} {self.stage.prompt.version}"
        return pa.Table.from_pylist([_verdict(row, judge) for row in self.stage(rows)], schema=RELATION_SCHEMA)


def _verdict(row: Row, judge: str) -> dict[str, Any]:
    ok = row["status"] == "kept"
    return {"clip_id": row["clip_id"], "source_video": row["source_video"], "verdict": "ok" if ok else "failed",
            "av_relation": row["av_relation"] if ok else None, "av_intensity": row["av_intensity"] if ok else None,
            "av_reason": row["av_reason"] if ok else None, "fail_reason": None if ok else row["reject_reason"],
            "fail_detail": None if ok else row["reject_detail"], "failure": None if ok else row.get("failure"),
            "judge": judge, "run_id": None, "judged_at": None}


def sed_candidates(clips: pa.Table) -> pa.Table:
    """Kept clips with an annotation: the rows that become SED records (and SABER-Test candidates)."""
    return clips.filter(pc.and_(pc.equal(clips.column("status"), "kept"), pc.is_valid(clips.column("video_desc"))))


def read_relations(output: str) -> pa.Table:
    return read_parts(storage.join(output, "relations"), RELATION_SCHEMA)


def _finished(verdict: dict[str, Any]) -> bool:
    """A verdict, a final failure or a given-up one. Rows of older builds have no `failure`: judged again."""
    return verdict["verdict"] == "ok" or verdict.get("failure") in (FINAL, GAVE_UP)


def latest_verdicts(relations: pa.Table) -> dict[str, dict[str, Any]]:
    """One verdict per clip: the successful one if any (a clip is never judged again after it), else a finished
    failure, else the latest retryable one."""
    best: dict[str, dict[str, Any]] = {}
    for row in sorted(relations.to_pylist(), key=lambda r: (r["verdict"] == "ok", _finished(r), r["judged_at"] or 0)):
        best[row["clip_id"]] = row
    return best


def retry_counts(relations: pa.Table) -> Counter[str]:
    """Retryable judge failures per clip over all builds (relations/ keeps every attempt)."""
    return Counter(r["clip_id"] for r in relations.select(["clip_id", "verdict", "failure"]).to_pylist()
                   if r["verdict"] != "ok" and r["failure"] in (RETRYABLE, None))


def settle_relations(table: pa.Table, earlier: Counter[str], max_attempts: int) -> pa.Table:
    """A retryable judge failure on a clip's last allowed attempt becomes `gave_up` (engine.dataset.ledger.settle)."""
    rows = table.to_pylist()
    for row in rows:
        if row["verdict"] != "ok":
            settled = settle(earlier[row["clip_id"]], row["failure"], row["fail_detail"], max_attempts)
            row.update(failure=settled.failure, fail_detail=settled.detail)
    return pa.Table.from_pylist(rows, schema=RELATION_SCHEMA)


def pending_for_judge(candidates: pa.Table, verdicts: dict[str, dict[str, Any]]) -> pa.Table:
    done = pa.array(sorted(cid for cid, v in verdicts.items() if _finished(v)), pa.string())
    return candidates.filter(pc.invert(pc.is_in(candidates.column("clip_id"), value_set=done))).select(
        list(JUDGE_COLUMNS))


def save_relations(output: str, run_id: str, table: pa.Table, part: int = 0) -> None:
    if not table.num_rows:
        return
    now = pa.array([datetime.now(timezone.utc)] * table.num_rows, pa.timestamp("ms", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * table.num_rows))
    table = table.set_column(table.schema.get_field_index("judged_at"), "judged_at", now)
    write_parquet_whole(storage.join(output, "relations"), f"part-{run_id}-{part:05d}.parquet", table)


@dataclass
class Splits:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def make_splits(candidates: pa.Table, verdicts: dict[str, dict[str, Any]] | None, per_subset: int,
                hold_out_speakers: bool = False, merged_recordings: dict[str, str] | None = None) -> Splits:
    """SED records for every candidate; with verdicts, the SABER-Test selection and the leakage-free rest: no
    recording, and with `hold_out_speakers` no speaker, has clips on both sides. `merged_recordings` (recording ->
    the recording standing for its group; engine.dataset.neardup.recording_groups) joins recordings linked by
    near-duplicates into one unit: no clip with a near-duplicate in training enters the test split, and no group
    straddles."""
    rows = candidates.to_pylist()
    records = [sed_record(row) for row in rows]
    if verdicts is None:
        return Splits(train=records, stats={"sed_records": len(records), "sed_train": len(records)})
    judged = [verdicts[r["clip_id"]] for r in rows if r["clip_id"] in verdicts]
    # Groups come from the clip table as it is now (a rerun with a corrected manifest regroups without re-judging).
    merged = merged_recordings or {}
    own_video = {r["clip_id"]: r["source_video"] or r["source_uri"] for r in rows}
    video_of = {cid: merged.get(video, video) for cid, video in own_video.items()}
    speaker_of = {r["clip_id"]: r.get("speaker") for r in rows}
    chosen = select_test([SaberTestCandidate(v["clip_id"], video_of[v["clip_id"]], v["av_relation"],
                                             v["av_intensity"], v["av_reason"] or "", speaker_of[v["clip_id"]])
                          for v in judged if v["verdict"] == "ok"], per_subset)
    train = split_train(records, chosen, video_of, speaker_of if hold_out_speakers else None)
    by_id = {r["clip_id"]: r for r in rows}
    test = [_test_record(by_id[c.clip_id], c) for c in chosen]
    selected = Counter(c.relation for c in chosen)
    test_ids, train_ids = [c.clip_id for c in chosen], [r["clip_id"] for r in train]
    test_videos = {video_of[i] for i in test_ids}
    held_out = set(video_of) - set(test_ids) - set(train_ids)
    stats = {
        "sed_records": len(records), "sed_train": len(train),
        "saber_test": {"consistent": selected["consistent"], "inconsistent": selected["inconsistent"],
                       "requested_per_subset": per_subset},
        # Clips neither in the test split nor in training: they share a recording with a test clip, or (held out
        # by speaker) only a speaker.
        "held_out_same_video": sum(video_of[i] in test_videos for i in held_out),
        "held_out_same_speaker": sum(video_of[i] not in test_videos for i in held_out),
        "groups": {"by": ["source_video", "speaker"] if hold_out_speakers else ["source_video"],
                   **group_stats(test_ids, train_ids, video_of, speaker_of)},
        "relations": _relation_stats(judged),
    }
    if merged:  # only when near-duplicates joined recordings: a build without any reports as before
        stats["near_duplicates"] = _near_duplicate_stats(own_video, merged, test_ids, train_ids)
    return Splits(train=train, test=test, stats=stats)


def _near_duplicate_stats(own_video: dict[str, str], merged: dict[str, str], test_ids: list[str],
                          train_ids: list[str]) -> dict[str, Any]:
    """Recordings joined by near-duplicates, and the joined groups on each side (`shared` is zero by construction)."""
    linked = set(merged) | set(merged.values())
    side = [{merged.get(own_video[i], own_video[i]) for i in ids if own_video[i] in linked}
            for ids in (test_ids, train_ids)]
    return {"linked_recordings": len({v for v in own_video.values() if v in linked}),
            "groups_in_test": len(side[0]), "groups_in_train": len(side[1]), "shared": len(side[0] & side[1])}


def _test_record(row: dict[str, Any], chosen: SaberTestCandidate) -> dict[str, Any]:
    return {**sed_record(row), "av_relation": chosen.relation, "av_intensity": chosen.intensity,
            "av_reason": chosen.reason, **{k: row[k] for k in ANNOTATION_FIELDS}}


def _relation_stats(judged: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [v for v in judged if v["verdict"] == "ok"]
    return {"judged": len(judged), "consistent": sum(v["av_relation"] == "consistent" for v in ok),
            "inconsistent": sum(v["av_relation"] == "inconsistent" for v in ok),
            "failed": dict(Counter(v["fail_reason"] for v in judged if v["verdict"] != "ok").most_common())}


def write_splits(output: str, splits: Splits, with_test: bool) -> None:
    """sed/, saber_test/ and exports/ rewritten whole (single files, so no stale part survives a rerun)."""
    write_parquet_whole(storage.join(output, "sed"), "part-00000.parquet",
                        pa.Table.from_pylist(splits.train, schema=SED_SCHEMA))
    if with_test:
        write_parquet_whole(storage.join(output, "saber_test"), "part-00000.parquet",
                            pa.Table.from_pylist(splits.test, schema=TEST_SCHEMA))
    write_exports(output, splits.train, splits.test if with_test else None)


def write_exports(output: str, train: list[dict[str, Any]], test: list[dict[str, Any]] | None) -> None:
    """The same records as ms-swift and LLaMA-Factory multimodal JSONL under OUT/exports/ (engine.dataset.exports)."""
    exports.write_exports(storage.join(output, "exports"), {"saber_train": train, "saber_test": test or []})
