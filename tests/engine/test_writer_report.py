import json
import threading
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


class CountingFileSystem(LocalFileSystem):
    """Local files that count the bytes read through them and how many are open at once (each open waits a little,
    as an S3 GET does, so that reads in parallel overlap)."""

    cachable = False

    def __init__(self):
        super().__init__()
        self.bytes_read, self.open_now, self.most_open = 0, 0, 0
        self.lock = threading.Lock()

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode=mode, **kwargs)
        if "r" not in mode:
            return handle
        with self.lock:
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
        time.sleep(0.05)
        return _Counted(handle, self)


class _Counted:
    def __init__(self, handle, fs):
        self.handle, self.fs = handle, fs

    def read(self, size=-1):
        data = self.handle.read(size)
        self.fs.bytes_read += len(data)
        return data

    def seek(self, *args):
        return self.handle.seek(*args)

    def tell(self):
        return self.handle.tell()

    def close(self):
        with self.fs.lock:
            self.fs.open_now -= 1
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _heavy_table(ids, seed):
    """Clips whose fingerprint column is 200 KB of random bytes each: almost all of a part's bytes."""
    table = _table(ids)
    noise = np.random.default_rng(seed)
    column = pa.array([noise.bytes(200_000) for _ in ids], pa.binary())
    return table.set_column(table.schema.get_field_index("audio_fingerprint"), "audio_fingerprint", column)


def test_resume_reads_only_the_clip_id_column_of_parts_in_parallel(tmp_path):
    """Six parts whose clip ids are a few hundred bytes of several MB: resume fetches those bytes only, several parts
    at once. A part whose fingerprint bytes are damaged still gives its ids (nothing else of it is read); a part that
    is not Parquet at all is set aside, never deleted."""
    writer = ClipTableWriter(str(tmp_path), flush_rows=10)
    expected = set()
    for n in range(6):
        ids = [f"c{n}-{i}" for i in range(10)]
        writer.add(_heavy_table(ids, n))
        expected |= set(ids)
    parts = sorted((tmp_path / "clips").iterdir())
    assert len(parts) == 6
    damaged = pq.ParquetFile(parts[2])
    chunk = damaged.metadata.row_group(0).column(damaged.schema_arrow.get_field_index("audio_fingerprint"))
    with open(parts[2], "r+b") as handle:  # the fingerprint column's first page header, overwritten
        handle.seek(chunk.data_page_offset)
        handle.write(b"\xff" * 64)
    with pytest.raises((pa.ArrowInvalid, OSError)):
        pq.read_table(parts[2])  # the part as a whole no longer reads ...
    (tmp_path / "clips" / "part-dead-00000.parquet").write_bytes(b"not parquet at all")
    total = sum(p.stat().st_size for p in (tmp_path / "clips").iterdir())
    again = ClipTableWriter(str(tmp_path))
    again.fs = CountingFileSystem()
    assert again.finished_ids() == expected  # ... but its ids do
    assert again.fs.bytes_read < total / 20  # a 64 KB footer read and the clip_id chunk of each: < 5% of 12 MB
    assert again.fs.most_open > 1  # parts read in parallel
    assert len(list((tmp_path / "clips").iterdir())) == 6
    assert [p.read_bytes() for p in (tmp_path / "quarantine" / "clips").iterdir()] == [b"not parquet at all"]


def test_read_clip_table_reads_the_columns_asked_for_in_the_parts_order(tmp_path, monkeypatch):
    writer = ClipTableWriter(str(tmp_path), flush_rows=5)
    for n in range(8):
        writer.add(_heavy_table([f"c{n}-{i}" for i in range(5)], n))
    shared = CountingFileSystem()
    monkeypatch.setattr("engine.dataset.writer.storage.filesystem", lambda _: shared)
    table = read_clip_table(str(tmp_path), ["clip_id", "status"])
    assert table.column_names == ["clip_id", "status"]
    assert table.column("clip_id").to_pylist() == [f"c{n}-{i}" for n in range(8) for i in range(5)]
    assert shared.most_open > 1 and shared.bytes_read < 8 * 5 * 200_000 / 10


def test_resume_and_streamed_files_on_s3(moto_s3):
    """The same reads against a real S3 endpoint (moto): ids from every part read by range, a part that is not
    Parquet set aside; a file written in pieces appears whole, and one whose writing fails does not appear."""
    from engine.core import storage
    from engine.core.parts import open_whole

    out = "s3://saber-test/build"
    writer = ClipTableWriter(out, flush_rows=10)
    expected = set()
    for n in range(4):
        ids = [f"c{n}-{i}" for i in range(10)]
        writer.add(_heavy_table(ids, n))
        expected |= set(ids)
    fs = storage.filesystem(out)
    fs.pipe_file("saber-test/build/clips/part-dead-00000.parquet", b"not parquet")
    assert ClipTableWriter(out).finished_ids() == expected
    assert fs.cat_file("saber-test/build/quarantine/clips/part-dead-00000.parquet") == b"not parquet"
    assert sorted(read_clip_table(out, ["clip_id"]).column(0).to_pylist()) == sorted(expected)
    with open_whole(f"{out}/sed", "a.jsonl") as handle:
        handle.write(b"one\n")
        handle.write(b"two\n")
    assert fs.cat_file("saber-test/build/sed/a.jsonl") == b"one\ntwo\n"
    with pytest.raises(RuntimeError), open_whole(f"{out}/sed", "b.jsonl") as handle:
        handle.write(b"half")
        raise RuntimeError("killed while writing")
    assert not fs.exists("saber-test/build/sed/b.jsonl")


def test_the_step_after_the_stream_reads_rows_and_light_columns_part_by_part(tmp_path):
    """build.read_clip_rows: the named clips' columns in the clip table's order, from any part; read_light_table:
    the few columns of every clip and whether it is annotated, without the annotation texts."""
    from engine.dataset.build import LIGHT_COLUMNS, read_clip_rows, read_light_table

    writer = ClipTableWriter(str(tmp_path), flush_rows=4)
    for n in range(3):
        table = _table([f"c{n}-{i}" for i in range(4)])
        desc = pa.array([f"scene {n}-{i}" if i % 2 else None for i in range(4)], pa.string())
        writer.add(table.set_column(table.schema.get_field_index("video_desc"), "video_desc", desc))
    rows = read_clip_rows(str(tmp_path), pa.chunked_array([["c2-1", "c0-3"], ["c1-0", "nowhere"]]),
                          ["video_desc", "clip_id"])
    assert rows.column_names == ["video_desc", "clip_id"]
    assert rows.to_pylist() == [{"video_desc": "scene 0-3", "clip_id": "c0-3"},
                                {"video_desc": None, "clip_id": "c1-0"},
                                {"video_desc": "scene 2-1", "clip_id": "c2-1"}]
    light = read_light_table(str(tmp_path))
    assert light.column_names == [*LIGHT_COLUMNS, "annotated"]
    assert light.column("annotated").to_pylist() == [False, True] * 6
