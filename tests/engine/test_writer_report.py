import json
from collections import Counter

import pyarrow as pa
import pytest
from fsspec.implementations.local import LocalFileSystem

from engine.core.schema import CLIP_SCHEMA, new_row, reject
from engine.dataset.report import build_report, write_report
from engine.dataset.writer import ClipTableWriter, StorageUnavailable, read_clip_table


def _table(ids, status="kept"):
    rows = []
    for cid in ids:
        row = {k: v for k, v in new_row(f"/x/{cid}.mp4").items() if k in CLIP_SCHEMA.names}
        row.update(clip_id=cid, status=status, duration_s=2.0)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def test_parts_flush_by_rows_and_resume_sees_them(tmp_path):
    writer = ClipTableWriter(str(tmp_path), flush_rows=2, flush_seconds=3600)
    writer.add(_table(["a"]))
    assert writer.part_files() == []  # below flush_rows: nothing on disk yet
    writer.add(_table(["b", "c"]))
    writer.close()
    assert len(writer.part_files()) == 1
    table = read_clip_table(str(tmp_path))
    assert sorted(table.column("clip_id").to_pylist()) == ["a", "b", "c"]
    assert set(table.column("run_id").to_pylist()) == {writer.run_id}
    assert ClipTableWriter(str(tmp_path)).finished_ids() == {"a", "b", "c"}


def test_unreadable_part_and_temporaries_are_set_aside_on_resume_never_deleted(tmp_path):
    writer = ClipTableWriter(str(tmp_path), flush_rows=1)
    writer.add(_table(["a"]))
    clips = tmp_path / "clips"
    (clips / "part-dead-00000.parquet").write_bytes(b"PAR1 truncated")
    (clips / "part-dead-00001.parquet.tmp").write_bytes(b"partial")
    (tmp_path / "quarantine" / "clips").mkdir(parents=True)
    (tmp_path / "quarantine" / "clips" / "part-dead-00000.parquet").write_bytes(b"set aside by an earlier run")
    again = ClipTableWriter(str(tmp_path))
    assert again.finished_ids() == {"a"}
    assert sorted(p.name for p in clips.iterdir()) == [next(iter(again.part_files())).rsplit("/", 1)[-1]]
    aside = {p.name: p.read_bytes() for p in (tmp_path / "quarantine" / "clips").iterdir()}
    assert aside == {"part-dead-00000.parquet": b"set aside by an earlier run",  # not overwritten
                     "part-dead-00000.parquet.1": b"PAR1 truncated", "part-dead-00001.parquet.tmp": b"partial"}


class FlakyFileSystem(LocalFileSystem):
    """Local files behind a storage that answers SlowDown (s3fs raises OSError) to the first `fails` opens of
    each path, or to every open when fails is None."""

    cachable = False  # a fresh instance (and open count) every time, not fsspec's cached one

    def __init__(self, fails: int | None):
        super().__init__()
        self.fails, self.opens = fails, Counter()

    def _open(self, path, mode="rb", **kwargs):
        self.opens[path] += 1
        if "r" in mode and (self.fails is None or self.opens[path] <= self.fails):
            raise OSError("SlowDown: Please reduce your request rate")
        return super()._open(path, mode=mode, **kwargs)


@pytest.mark.parametrize("fails", [3, None])
def test_a_throttled_part_read_is_retried_then_stops_the_run_without_touching_anything(tmp_path, monkeypatch, fails):
    writer = ClipTableWriter(str(tmp_path), flush_rows=1)
    writer.add(_table(["a"]))
    writer.add(_table(["b"]))
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "clips").iterdir())
    monkeypatch.setattr("engine.core.parts.READ_BACKOFF_S", 0.001)
    again = ClipTableWriter(str(tmp_path))
    again.fs = FlakyFileSystem(fails)
    if fails is None:
        with pytest.raises(StorageUnavailable, match="failed 4 times"):
            again.finished_ids()
    else:  # 3 SlowDowns per part, then an answer: within the 4 attempts
        assert again.finished_ids() == {"a", "b"}
        assert sorted(again.fs.opens.values()) == [4, 4]
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "clips").iterdir()) == before
    assert not (tmp_path / "quarantine").exists()
    # The shared part reader (clips/, relations/, the preference ledger, evaluation) retries the same way.
    shared = FlakyFileSystem(fails)
    monkeypatch.setattr("engine.dataset.writer.storage.filesystem", lambda _: shared)
    if fails is None:
        with pytest.raises(StorageUnavailable):
            read_clip_table(str(tmp_path))
    else:
        assert sorted(read_clip_table(str(tmp_path)).column("clip_id").to_pylist()) == ["a", "b"]
        assert sorted(shared.opens.values()) == [4, 4]


def test_duplicates_are_never_written_twice(tmp_path):
    writer = ClipTableWriter(str(tmp_path), flush_rows=1)
    writer.add(_table(["a", "b"]))
    resumed = ClipTableWriter(str(tmp_path), flush_rows=1)
    resumed.finished_ids()
    resumed.add(_table(["b", "c"]))
    resumed.close()
    assert resumed.duplicates_dropped == 1
    assert sorted(read_clip_table(str(tmp_path)).column("clip_id").to_pylist()) == ["a", "b", "c"]


def test_report_counts_worked_by_hand(tmp_path):
    rows = _table(["k1", "k2", "k3"]).to_pylist()
    bad = _table(["p1", "p2", "d1", "a1"]).to_pylist()
    for row, (stage, reason) in zip(bad, [("probe", "duration_too_long"), ("probe", "duration_too_long"),
                                          ("decode", "decode_failed"), ("asr", "wer_above_threshold")],
                                   strict=True):
        reject(row, stage, reason)
    table = pa.Table.from_pylist(rows + bad, schema=CLIP_SCHEMA)
    report = build_report(table, ["annotation", "probe", "decode", "noise", "asr"], {"seconds": 1.0})
    assert (report["input"], report["kept"], report["rejected"]) == (7, 3, 4)
    assert report["rejected_by_reason"] == {"probe/duration_too_long": 2, "decode/decode_failed": 1,
                                            "asr/wer_above_threshold": 1}
    assert [f["remaining"] for f in report["funnel"]] == [7, 7, 5, 4, 4, 3]
    # Only kept clips count as media hours: 3 clips x 2 s.
    assert report["kept_media_hours"] == pytest.approx(6 / 3600, abs=1e-4)
    write_report(str(tmp_path), report)
    assert json.loads((tmp_path / "report.json").read_text())["kept"] == 3
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
