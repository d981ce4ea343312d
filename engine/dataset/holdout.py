"""After the stream: relation verdicts, the SABER-Test split, and the training records and exports.

The relation judge's verdicts persist in `relations/` (one part per run, written whole), so a rerun judges
only clips without a verdict yet; `saber_test/`, `sed/` and `exports/` are then rewritten whole from
`clips/` and `relations/`, so every run leaves them consistent with each other.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.core import storage
from engine.core.failures import FINAL, GAVE_UP, RETRYABLE
from engine.core.parts import open_whole
from engine.core.schema import ANNOTATION_FIELDS
from engine.core.sed import SED_SCHEMA, sed_record
from engine.dataset import exports
from engine.dataset.ledger import settle
from engine.dataset.saber_test import SaberTestCandidate
from engine.dataset.split_plan import SplitPlan, plan_splits, verdict_table
from engine.dataset.writer import read_parts, write_parquet_whole
from engine.stages.base import Row

log = logging.getLogger(__name__)

JUDGE_COLUMNS = ("clip_id", "source_video", *ANNOTATION_FIELDS)
# What write_split_records reads of each clip to make its SED record (engine.core.sed.sed_record) and test record.
RECORD_COLUMNS = ("clip_id", "source_uri", "source_video", "dataset", "lang", *ANNOTATION_FIELDS)

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


def candidate_mask(clips: pa.Table) -> pa.ChunkedArray:
    """Kept clips with an annotation: the rows that become SED records (and SABER-Test candidates)."""
    return pc.and_(pc.equal(clips.column("status"), "kept"), pc.is_valid(clips.column("video_desc")))


def sed_candidates(clips: pa.Table) -> pa.Table:
    return clips.filter(candidate_mask(clips))


def read_relations(output: str) -> pa.Table:
    return read_parts(storage.join(output, "relations"), RELATION_SCHEMA)


def _finished(verdict: dict[str, Any]) -> bool:
    """A verdict, a final failure or a given-up one. Rows of older builds have no `failure`: judged again."""
    return verdict["verdict"] == "ok" or verdict.get("failure") in (FINAL, GAVE_UP)


def latest_verdicts(relations: pa.Table) -> dict[str, dict[str, Any]]:
    """One verdict per clip: the successful one if any (a clip is never judged again after it), else a finished
    failure, else the latest retryable one (engine.dataset.split_plan.verdict_table)."""
    return {row["clip_id"]: row for row in verdict_table(relations).to_pylist()}


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


def save_relations(output: str, run_id: str, table: pa.Table, part: int = 0, stem: str = "") -> None:
    """One relations/ part; `stem` keeps apart the part series of one run (the stream's "s", the global step's "")."""
    if not table.num_rows:
        return
    now = pa.array([datetime.now(timezone.utc)] * table.num_rows, pa.timestamp("ms", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * table.num_rows))
    table = table.set_column(table.schema.get_field_index("judged_at"), "judged_at", now)
    write_parquet_whole(storage.join(output, "relations"), f"part-{run_id}-{stem}{part:05d}.parquet", table)


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
    straddles. Groups come from the clip table as it is now (a rerun with a corrected manifest regroups without
    re-judging). The selection is engine.dataset.split_plan's; the build streams the records (write_split_records)
    where this holds them all."""
    table = None if verdicts is None else pa.Table.from_pylist(list(verdicts.values()), schema=RELATION_SCHEMA)
    plan = plan_splits(candidates, table, per_subset, hold_out_speakers, merged_recordings)
    test_rows: dict[str, dict[str, Any]] = {}
    train = [record for batch in _record_batches([candidates], plan, test_rows) for record in batch]
    return Splits(train=train, test=[_test_record(test_rows[c.clip_id], c) for c in plan.test], stats=plan.stats)


def _record_batches(parts: Iterable[pa.Table], plan: SplitPlan,
                    test_rows: dict[str, dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Per part of the clip table: the SED records of its training clips; its test clips' rows go into `test_rows`
    (2 x per_subset at most)."""
    test_ids = pa.array([c.clip_id for c in plan.test], pa.string())
    train = set(plan.train_ids.to_pylist())  # built once: an Arrow is_in would hash every training id for each part
    for part in parts:
        ids = part.column("clip_id")
        if len(test_ids):
            test_rows.update((r["clip_id"], r) for r in part.filter(pc.is_in(ids, value_set=test_ids)).to_pylist())
        rows = part.filter(pa.array([cid in train for cid in ids.to_pylist()], pa.bool_())).to_pylist()
        if rows:
            yield [sed_record(row) for row in rows]


def _test_record(row: dict[str, Any], chosen: SaberTestCandidate) -> dict[str, Any]:
    return {**sed_record(row), "av_relation": chosen.relation, "av_intensity": chosen.intensity,
            "av_reason": chosen.reason, **{k: row[k] for k in ANNOTATION_FIELDS}}


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


def write_split_records(output: str, parts: Iterable[pa.Table], plan: SplitPlan, with_test: bool) -> None:
    """sed/, saber_test/ and exports/ as write_splits writes them, the training records streamed from `parts` (the
    clip table part by part, RECORD_COLUMNS at least): memory holds one part's records, not the split's."""
    test_rows: dict[str, dict[str, Any]] = {}
    counts = {"saber_train": len(plan.train_ids), "saber_test": len(plan.test) if with_test else 0}
    _write_dataset(output, "sed", SED_SCHEMA, "saber_train", _record_batches(parts, plan, test_rows), counts)
    test = [_test_record(test_rows[c.clip_id], c) for c in plan.test]
    _write_dataset(output, "saber_test" if with_test else None, TEST_SCHEMA, "saber_test", iter([test]), counts)
    folder = storage.join(output, "exports")
    fs, base = storage.filesystem(folder), storage.strip_protocol(folder)
    info: dict[str, Any] = {}
    for name, count in counts.items():
        info |= exports.llama_factory_dataset_info(name, f"{name}.jsonl") if count else {}
    fs.pipe_file(f"{base}/llama_factory/dataset_info.json", json.dumps(info, indent=2).encode("utf-8"))


def _write_dataset(output: str, folder: str | None, schema: pa.Schema, name: str,
                   batches: Iterator[list[dict[str, Any]]], counts: dict[str, int]) -> None:
    """Records into OUTPUT/folder/part-00000.parquet (folder None: no Parquet) and OUTPUT/exports/<framework>/
    <name>.jsonl, each file appearing whole; a dataset without records loses the export files of an earlier run
    (both loaders crash on an empty file), as engine.dataset.exports.write_exports does."""
    exports_dir = storage.join(output, "exports")
    with ExitStack() as stack:
        writer = None if folder is None else pq.ParquetWriter(
            stack.enter_context(open_whole(storage.join(output, folder), "part-00000.parquet")), schema)
        lines = {fw: stack.enter_context(open_whole(storage.join(exports_dir, fw), f"{name}.jsonl"))
                 for fw in exports.FRAMEWORKS} if counts[name] else {}
        for batch in batches:
            if writer is not None:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            done: list[tuple[list[dict[str, Any]], bytes]] = []
            for fw, handle in lines.items():
                rows = [exports.CONVERTERS[False][fw](r) for r in batch]
                # Both layouts' SFT rows are alike today: JSON (most of this step's time) is made once for both.
                text = next((t for earlier, t in done if earlier == rows), None) or "".join(
                    json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
                done.append((rows, text))
                handle.write(text)
        if writer is not None:
            writer.close()
    fs = storage.filesystem(exports_dir)
    for fw in exports.FRAMEWORKS:
        fs.makedirs(f"{storage.strip_protocol(exports_dir)}/{fw}", exist_ok=True)
        path = f"{storage.strip_protocol(exports_dir)}/{fw}/{name}.jsonl"
        if not counts[name] and fs.exists(path):
            fs.rm(path)
