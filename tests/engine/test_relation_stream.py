"""The relation judge inside the stream (engine.dataset.relation_stream): which rows it labels, that a judge failure
leaves the clip as it was, how verdicts come off the rows before the writer, and when they are saved."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.core.failures import GAVE_UP, RETRYABLE
from engine.core.schema import ANNOTATION_FIELDS, CLIP_SCHEMA
from engine.dataset import holdout
from engine.dataset.relation_stream import PREFIX, RelationSink, RelationStreamBatch, split_batch
from engine.models.backends.base import ChatResult
from engine.stages.relation import RelationJudgeStage


class Judge:
    """Relation by clip id (found in the prompt's video description); `error` clips get a retryable API error."""

    model_id = "scripted-judge"

    def __init__(self, relations: dict[str, str], error: set[str] = frozenset()) -> None:
        self.relations, self.error, self.asked = relations, error, []

    def chat(self, requests):
        out = []
        for request in requests:
            clip = next(c for c in self.relations if f"scene of {c}." in request.messages[0]["content"])
            self.asked.append(clip)
            if clip in self.error:
                out.append(ChatResult(None, "rate_limited"))
            else:
                answer = {"relation": self.relations[clip], "intensity": 4, "reason": f"{clip} judged"}
                out.append(ChatResult(json.dumps(answer), None))
        return out


def _clips(specs: list[tuple[str, str, bool]]) -> pa.Table:
    """(clip id, status, annotated) -> CLIP_SCHEMA rows."""
    rows = []
    for clip, status, annotated in specs:
        row = {name: None for name in CLIP_SCHEMA.names}
        row.update(clip_id=clip, source_uri=f"/c/{clip}.mp4", source_video=f"rec-{clip}", status=status)
        if annotated:
            row.update({field: f"{field} of {clip}" for field in ANNOTATION_FIELDS}, video_desc=f"scene of {clip}.")
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def test_only_kept_annotated_clips_are_judged_and_a_failure_leaves_the_clip_kept() -> None:
    judge = Judge({"a": "consistent", "b": "inconsistent", "c": "consistent", "d": "consistent"}, error={"d"})
    table = _clips([("a", "kept", True), ("b", "kept", True), ("c", "rejected", True), ("x", "kept", False),
                    ("d", "kept", True)])
    out = RelationStreamBatch(lambda: RelationJudgeStage(judge, max_tokens=64))(table)
    assert sorted(judge.asked) == ["a", "b", "d"]  # not the rejected c, not the unannotated x

    clips, verdicts = split_batch(out)
    assert clips.equals(table)  # the clip rows leave exactly as they came in: d stays kept
    assert verdicts.schema == holdout.RELATION_SCHEMA
    got = {r["clip_id"]: (r["verdict"], r["av_relation"], r["failure"]) for r in verdicts.to_pylist()}
    assert got == {"a": ("ok", "consistent", None), "b": ("ok", "inconsistent", None),
                   "d": ("failed", None, RETRYABLE)}
    assert out.column(PREFIX + "clip_id").to_pylist() == ["a", "b", None, None, "d"]


def test_a_batch_without_candidates_and_a_stream_without_the_judge() -> None:
    judge = Judge({})
    table = _clips([("c", "rejected", True), ("x", "kept", False)])
    out = RelationStreamBatch(lambda: RelationJudgeStage(judge, max_tokens=64))(table)
    assert judge.asked == [] and split_batch(out)[1].num_rows == 0
    clips, verdicts = split_batch(table)  # judge_in_stream off: plain CLIP_SCHEMA batches pass through
    assert clips.equals(table) and verdicts.num_rows == 0


def _verdicts(*specs: tuple[str, str | None]) -> pa.Table:
    rows = [{"clip_id": c, "source_video": None, "verdict": "ok" if f is None else "failed",
             "av_relation": "consistent" if f is None else None, "av_intensity": 3 if f is None else None,
             "av_reason": None, "fail_reason": None if f is None else "model_error", "fail_detail": "x",
             "failure": f, "judge": "j", "run_id": None, "judged_at": None} for c, f in specs]
    return pa.Table.from_pylist(rows, schema=holdout.RELATION_SCHEMA)


def test_the_sink_saves_after_each_committed_clip_part_and_settles_retries(tmp_path: Path) -> None:
    sink = RelationSink(str(tmp_path), "run1", max_attempts=3, earlier=Counter({"b": 2}))
    sink.add(_verdicts(("a", None)), clip_part_committed=False)
    assert not (tmp_path / "relations").exists()  # held until the writer commits a clip part
    sink.add(_verdicts(("b", RETRYABLE)), clip_part_committed=True)
    sink.add(_verdicts(("c", None)), clip_part_committed=False)
    sink.flush()
    parts = sorted(p.name for p in (tmp_path / "relations").iterdir())
    assert parts == ["part-run1-s00000.parquet", "part-run1-s00001.parquet"]
    first = pq.read_table(tmp_path / "relations" / parts[0]).to_pylist()
    assert [(r["clip_id"], r["failure"], r["run_id"]) for r in first] == [("a", None, "run1"), ("b", GAVE_UP, "run1")]
    assert sink.saved == 3 and holdout.read_relations(str(tmp_path)).num_rows == 3


def test_the_judge_after_the_stream_saves_every_flush_rows_verdicts(tmp_path: Path, monkeypatch) -> None:
    """build.judge_relations (clips the stream could not judge) through the same sink: parts part-<run>-NNNNN, one
    each time flush_rows verdicts are buffered, the rest at the end; retryable failures settled against earlier runs."""
    from types import SimpleNamespace

    from engine.dataset import build

    batches = [_verdicts(("a", None), ("b", None)), _verdicts(("c", RETRYABLE), ("d", None)), _verdicts(("e", None))]
    monkeypatch.setattr(build, "relation_plan", lambda pending, config: SimpleNamespace(
        iter_batches=lambda **kwargs: iter(batches)))
    holdout.save_relations(str(tmp_path), "old", _verdicts(("c", RETRYABLE)), stem="s")  # c's first attempt
    config = SimpleNamespace(output=str(tmp_path), max_attempts=2, flush_rows=3)
    build.judge_relations(config, pa.table({"clip_id": ["a"]}), "run2")
    parts = sorted(p.name for p in (tmp_path / "relations").iterdir() if "run2" in p.name)
    assert parts == ["part-run2-00000.parquet", "part-run2-00001.parquet"]
    sizes = [pq.read_table(tmp_path / "relations" / name).num_rows for name in parts]
    assert sizes == [4, 1]  # 2 + 2 reach flush_rows 3 together; e at the end
    second = pq.read_table(tmp_path / "relations" / parts[0]).to_pylist()
    assert {r["clip_id"]: r["failure"] for r in second}["c"] == GAVE_UP  # its second of max_attempts 2
