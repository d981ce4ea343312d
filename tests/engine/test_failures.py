"""The one failure policy: which failures are verdicts (final) and which are faults of the world (retryable), the
attempt ledger that turns retryable failures into reruns and, after max_attempts runs, into `gave_up`, and the
isolation of a model batch that raises (split, down to the one request that fails)."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from engine.core.failures import backend_failure, exception_failure
from engine.core.schema import CLIP_SCHEMA, new_row, reject
from engine.dataset.report import build_report
from engine.dataset.writer import ClipTableWriter, read_clip_table
from engine.models.backends.base import ChatRequest, ChatResult
from engine.models.prompts import Prompt
from engine.stages.base import RowStage
from engine.stages.model_stage import BatchedModelStage


# ---------------------------------------------------------------- classification
@pytest.mark.parametrize(("error", "expected"), [
    ("bad_request_400", "final"), ("too_large_413", "final"), ("too_long", "final"), ("bad_media", "final"),
    ("unsupported_media", "final"), ("rate_limited", "retryable"), ("timeout", "retryable"),
    ("server_error_503", "retryable"), ("connection_error", "retryable"), ("malformed_response", "retryable"),
    ("auth_error_401", "retryable"), ("not_found_404", "retryable"), ("out_of_memory", "retryable")])
def test_backend_errors_that_judge_the_request_are_final_the_rest_retryable(error, expected):
    assert backend_failure(error) == expected


@pytest.mark.parametrize(("err", "reason"), [
    (MemoryError(), "out_of_memory"), (torch.OutOfMemoryError("CUDA out of memory"), "out_of_memory"),
    (TimeoutError("read"), "timeout"), (ConnectionResetError("peer"), "storage_error"),
    (OSError("SlowDown"), "storage_error"), (ZeroDivisionError("bug"), "internal_error")])
def test_exceptions_are_never_verdicts_about_the_clip(err, reason):
    assert exception_failure(err) == (reason, "retryable")


class _Flaky(RowStage):
    name = "flaky"

    def process_row(self, row):
        if "throttled" in row["source_uri"]:
            raise OSError("503 SlowDown")
        if "bug" in row["source_uri"]:
            raise KeyError("oops")


def test_a_stage_records_the_class_with_the_reason():
    rows = _Flaky()([new_row("/a/throttled"), new_row("/a/bug"), new_row("/a/fine")])
    assert [(r["status"], r["reject_reason"], r["failure"]) for r in rows] == [
        ("rejected", "storage_error", "retryable"), ("rejected", "internal_error", "retryable"),
        ("kept", None, None)]
    assert reject(new_row("/a/x"), "decode", "duration_mismatch")["failure"] == "final"


# ---------------------------------------------------------------- the ledger through the clips/ writer
def _row(cid, failure=None, reason=None):
    row = {k: v for k, v in new_row(f"/x/{cid}.mp4").items() if k in CLIP_SCHEMA.names}
    row.update(clip_id=cid, duration_s=1.0)
    if failure:
        reject(row, "annotate", reason, f"model: {reason}", failure)
    return row


def _run(tmp_path, rows, max_attempts=3):
    """One build run's writer: resume, write these outcomes, close. Returns the writer."""
    writer = ClipTableWriter(str(tmp_path), flush_rows=100, max_attempts=max_attempts)
    finished = writer.finished_ids()
    writer.add(pa.Table.from_pylist([r for r in rows if r["clip_id"] not in finished], schema=CLIP_SCHEMA))
    writer.close()
    return writer


def test_retryable_clips_wait_in_the_ledger_and_give_up_after_max_attempts(tmp_path):
    # Run 1: a kept, b rejected for good, c and d hit an outage.
    first = _run(tmp_path, [_row("a"), _row("b", "final", "annotation_invalid"),
                            _row("c", "retryable", "model_error"), _row("d", "retryable", "model_error")])
    assert first.retries_recorded == 2
    assert sorted(read_clip_table(str(tmp_path)).column("clip_id").to_pylist()) == ["a", "b"]
    assert ClipTableWriter(str(tmp_path)).finished_ids() == {"a", "b"}  # c, d are done again by the next run
    # Run 2: c is answered now, d fails again. Run 3: d fails a third time: given up (max_attempts=3).
    _run(tmp_path, [_row("c"), _row("d", "retryable", "model_error")])
    third = _run(tmp_path, [_row("d", "retryable", "model_error")])
    assert third.retries_recorded == 0
    rows = {r["clip_id"]: r for r in read_clip_table(str(tmp_path)).to_pylist()}
    assert {cid: (r["status"], r["failure"], r["attempts"]) for cid, r in rows.items()} == {
        "a": ("kept", None, 1), "b": ("rejected", "final", 1), "c": ("kept", None, 2),
        "d": ("rejected", "gave_up", 3)}
    assert rows["d"]["reject_detail"] == "gave up after 3 attempts; last: model: model_error"
    # A fourth run has nothing to do: every clip is finished, and the ledger says nothing is pending.
    fourth = ClipTableWriter(str(tmp_path))
    assert fourth.finished_ids() == {"a", "b", "c", "d"} and fourth.ledger.pending(rows) == {}


def test_the_report_shows_pending_retries_and_given_up_clips(tmp_path):
    _run(tmp_path, [_row("a"), _row("c", "retryable", "model_error"), _row("e", "retryable", "storage_error")],
         max_attempts=2)
    _run(tmp_path, [_row("c", "retryable", "model_error")], max_attempts=2)  # c gives up; e not retried this run
    writer = ClipTableWriter(str(tmp_path), max_attempts=2)
    table = read_clip_table(str(tmp_path))
    pending = writer.ledger.pending(table.column("clip_id").to_pylist())
    report = build_report(table, ["annotate"], {}, pending)
    assert json.loads(json.dumps(report["retry"])) == {
        "pending": 1, "pending_by_reason": {"annotate/storage_error": 1}, "pending_attempts": {"1": 1},
        "gave_up": 1, "gave_up_by_reason": {"annotate/model_error": 1}}
    assert (report["input"], report["rejected"]) == (2, 1)


def test_parts_written_before_the_failure_columns_still_resume(tmp_path):
    """An output of an older build (clips/ parts without `failure` and `attempts`) reads and resumes."""
    old = pa.Table.from_pylist([_row("a")], schema=CLIP_SCHEMA).drop_columns(["failure", "attempts"])
    (tmp_path / "clips").mkdir()
    pq.write_table(old, tmp_path / "clips" / "part-old-00000.parquet")
    _run(tmp_path, [_row("a"), _row("b")])
    table = read_clip_table(str(tmp_path))
    assert table.schema == CLIP_SCHEMA
    assert sorted(zip(table.column("clip_id").to_pylist(), table.column("attempts").to_pylist(), strict=True)) == [
        ("a", None), ("b", 1)]


# ---------------------------------------------------------------- a model batch that raises
class _Backend:
    """Raises for any batch holding a "poison" request (as an OOM would for a batch too big to fit)."""

    model_id = "scripted"

    def __init__(self):
        self.batches: list[int] = []

    def chat(self, requests):
        self.batches.append(len(requests))
        if any("poison" in r.messages[0]["content"] for r in requests):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [ChatResult(text="fine", error=None) for _ in requests]


class _Stage(BatchedModelStage):
    name = "label"
    prompt = Prompt("label", "label it")

    def request(self, row):
        return ChatRequest([{"role": "user", "content": row["source_uri"]}])

    def accept(self, row, text):
        row["label"] = text


def test_a_batch_that_raises_is_split_and_only_the_failing_request_fails():
    backend = _Backend()
    rows = _Stage(backend)([new_row(f"/c/{i}") for i in range(5)] + [new_row("/c/poison")] + [new_row("/c/6")])
    assert [r["label"] for r in rows] == ["fine"] * 5 + [None, "fine"]
    assert (rows[5]["reject_reason"], rows[5]["reject_detail"], rows[5]["failure"]) == (
        "model_error", "scripted: out_of_memory", "retryable")
    # 7 -> 3 + 4 -> (4 fails) 2 + 2 -> (2 with poison fails) 1 + 1: each good request answered exactly once.
    assert backend.batches == [7, 3, 4, 2, 2, 1, 1]


def test_local_backend_halves_a_chunk_that_runs_out_of_memory(monkeypatch):
    """TransformersChatBackend._run: OOM on a chunk of 4 -> two chunks of 2, all answered; a prompt that does
    not fit even alone is an out_of_memory result, not an exception."""
    from engine.models.backends import local

    backend = object.__new__(local.TransformersChatBackend)  # no model: _encode/_generate are scripted below
    backend._max_len, backend._stop_ids = 10_000, set()
    sizes = []

    def encode(chunk):
        return {"attention_mask": torch.ones(len(chunk), 3, dtype=torch.long),
                "ids": [p.text for p in chunk]}

    def generate(inputs, request):
        sizes.append(len(inputs["ids"]))
        if len(inputs["ids"]) > 2 or "huge" in inputs["ids"]:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return torch.ones(len(inputs["ids"]), 2, dtype=torch.long)

    monkeypatch.setattr(backend, "_encode", encode, raising=False)
    monkeypatch.setattr(backend, "_generate", generate, raising=False)
    monkeypatch.setattr(backend, "_result", lambda row, n: ChatResult(text="ok", error=None), raising=False)
    request = ChatRequest([{"role": "user", "content": "x"}], max_tokens=4)
    prompts = [local._Prompt(i, request, text) for i, text in enumerate(["a", "b", "huge", "d"])]
    results = backend._run(prompts)
    assert [r.error for r in results] == [None, None, "out_of_memory", None]
    assert sizes == [4, 2, 2, 1, 1]
    assert Counter(r.text for r in results) == Counter({"ok": 3, None: 1})
