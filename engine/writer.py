"""The `clips/` table writer, which is also the resume checkpoint.

A part file appears whole or not at all (local: write to a temporary name, then rename; S3: one PUT), so
the set of clip ids in readable part files is exactly the set of finished clips. A rerun reads those ids
and skips them. Resume never deletes: a read that fails for a reason of the storage (throttling, a timeout, a
dropped connection) is retried, and raises if it keeps failing, so the rerun stops with nothing lost; a part
whose bytes are not Parquet (not ours, or cut short) and a temporary file of an interrupted write are moved to
OUT/quarantine/ with a log line, and their clips are done again.

Only finished clips are written (kept, rejected for good, or given up): a clip that failed for a reason of the
world (engine.failures: retryable) goes to the attempt ledger (engine.ledger, OUT/attempts/clips/) instead, so
the next run does it again, until `max_attempts` runs have failed it and it is written as `gave_up`.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from engine import storage
from engine.failures import RETRYABLE
from engine.schema import CLIP_SCHEMA

log = logging.getLogger(__name__)

PART_PREFIX = "part-"
QUARANTINE_DIR = "quarantine"
READ_ATTEMPTS = 4  # a part read that fails this often for a storage reason stops the rerun
READ_BACKOFF_S = 0.5  # doubled after each failed attempt


class StorageUnavailable(OSError):
    """A read kept failing for a reason of the storage: a fault of the world, retried by the next run."""


class ClipTableWriter:
    def __init__(self, output: str, flush_rows: int = 64, flush_seconds: float = 15.0,
                 run_id: str | None = None, max_attempts: int = 3) -> None:
        from engine.ledger import AttemptLedger  # engine.ledger builds on this module's part reader and writer

        self.dir = storage.join(output, "clips")
        self.quarantine = storage.strip_protocol(storage.join(output, QUARANTINE_DIR, "clips"))
        self.fs = storage.filesystem(self.dir)
        self.path = storage.strip_protocol(self.dir)
        self.fs.makedirs(self.path, exist_ok=True)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        self._parts = 0
        self._written_ids: set[str] = set()
        self.duplicates_dropped = 0
        self.ledger = AttemptLedger(output, "clips", self.run_id, max_attempts)
        self.retries_recorded = 0  # retryable failures of this run, waiting for the next

    # -- resume ---------------------------------------------------------------------------------------
    def part_files(self) -> list[str]:
        return _list(self.fs, self.path, PART_PREFIX, ".parquet")

    def finished_ids(self) -> set[str]:
        """Clip ids already written by earlier runs; what a killed run left unusable is set aside, not deleted."""
        for stray in _list(self.fs, self.path, PART_PREFIX, ".tmp"):
            set_aside(self.fs, stray, self.quarantine, "the temporary file of an interrupted write")
        ids: set[str] = set()
        for part in self.part_files():
            data = read_with_retries(self.fs, part)
            try:
                column = pq.read_table(io.BytesIO(data), columns=["clip_id"]).column(0)
            except (pa.ArrowInvalid, OSError) as err:  # parsing bytes in memory: the content itself is bad
                set_aside(self.fs, part, self.quarantine, f"not a readable clips part ({err})")
                continue
            ids.update(column.to_pylist())
        self._written_ids |= ids
        self.ledger.load()
        return ids

    # -- writing --------------------------------------------------------------------------------------
    def add(self, table: pa.Table) -> None:
        table = self._settle(self._drop_seen(table))
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
        if self._pending_rows >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def _drop_seen(self, table: pa.Table) -> pa.Table:
        ids = table.column("clip_id").to_pylist()
        keep = [i for i, cid in enumerate(ids) if cid not in self._written_ids]
        self.duplicates_dropped += len(ids) - len(keep)
        self._written_ids.update(ids)
        return table if len(keep) == len(ids) else table.take(keep)

    def _settle(self, table: pa.Table) -> pa.Table:
        """Numbers each clip's attempt; retryable failures go to the ledger (not finished) unless this was the
        last allowed attempt, which is written as `gave_up`."""
        rows = table.to_pylist()
        finished = []
        for row in rows:
            settled = self.ledger.settle(row["clip_id"], row.get("failure"), row.get("reject_detail"))
            row.update(attempts=settled.attempt, failure=settled.failure, reject_detail=settled.detail)
            if settled.failure == RETRYABLE:
                self.ledger.add(row["clip_id"], row["reject_stage"], row["reject_reason"], row["reject_detail"])
                self._written_ids.discard(row["clip_id"])
                self.retries_recorded += 1
            else:
                finished.append(row)
        return pa.Table.from_pylist(finished, schema=table.schema)

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        self.ledger.flush()
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        stamp = pa.array([datetime.now(timezone.utc)] * table.num_rows, pa.timestamp("ms", tz="UTC"))
        table = table.set_column(table.schema.get_field_index("run_id"), "run_id",
                                 pa.array([self.run_id] * table.num_rows, pa.string()))
        table = table.set_column(table.schema.get_field_index("processed_at"), "processed_at", stamp)
        self._write_part(table.cast(CLIP_SCHEMA))
        self._pending, self._pending_rows = [], 0

    def _write_part(self, table: pa.Table) -> None:
        write_parquet_whole(self.dir, f"{PART_PREFIX}{self.run_id}-{self._parts:05d}.parquet", table)
        self._parts += 1

    def close(self) -> None:
        self.flush()


def _list(fs: fsspec.AbstractFileSystem, path: str, prefix: str, suffix: str) -> list[str]:
    """Files in `path` named prefix*suffix; none when the folder does not exist (S3 has no empty folders)."""
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(p for p in names if p.rsplit("/", 1)[-1].startswith(prefix) and p.endswith(suffix))


def read_with_retries(fs: fsspec.AbstractFileSystem, path: str, attempts: int = READ_ATTEMPTS,
                      backoff_s: float | None = None) -> bytes:
    """The whole file. Storage errors (s3fs raises OSError for SlowDown, 503s and timeouts) are retried with
    backoff; after `attempts` they raise StorageUnavailable. A missing file raises FileNotFoundError at once."""
    backoff_s = READ_BACKOFF_S if backoff_s is None else backoff_s
    for attempt in range(1, attempts + 1):
        try:
            with fs.open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as err:
            if attempt == attempts:
                raise StorageUnavailable(f"reading {path} failed {attempts} times, last: {err!r}; nothing was "
                                         "changed, run again when the storage answers") from err
            log.warning("reading %s failed (attempt %d of %d), retrying: %r", path, attempt, attempts, err)
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def set_aside(fs: fsspec.AbstractFileSystem, path: str, quarantine: str, why: str) -> str:
    """Moves a file that resume cannot use into `quarantine` (a person decides what to do with it) and says so.
    A name already there gets a numbered suffix: nothing set aside earlier is overwritten."""
    fs.makedirs(quarantine, exist_ok=True)
    name = path.rsplit("/", 1)[-1]
    target, n = f"{quarantine}/{name}", 1
    while fs.exists(target):
        target, n = f"{quarantine}/{name}.{n}", n + 1
    fs.mv(path, target)
    log.warning("moved %s to %s: %s", path, target, why)
    return target


def write_parquet_whole(directory: str, name: str, table: pa.Table) -> None:
    """Writes `directory/name` so that it appears whole or not at all (a reader never sees half a file)."""
    fs = storage.filesystem(directory)
    path = storage.strip_protocol(directory)
    fs.makedirs(path, exist_ok=True)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    final = f"{path}/{name}"
    if storage.is_remote(directory):
        fs.pipe_file(final, buffer.getvalue())  # a single PUT: the object exists whole or not
        return
    temp = f"{final}.tmp"
    with open(temp, "wb") as handle:
        handle.write(buffer.getvalue())
    fs.mv(temp, final)  # rename within one directory is atomic on POSIX


def read_parts(directory: str, schema: pa.Schema, columns: Iterable[str] | None = None) -> pa.Table:
    """All part-*.parquet files of a folder as one table (empty, with the schema, when there are none)."""
    fs = storage.filesystem(directory)
    cols = list(columns) if columns else None
    tables = []
    for part in _list(fs, storage.strip_protocol(directory), PART_PREFIX, ".parquet"):
        parquet = pq.ParquetFile(io.BytesIO(read_with_retries(fs, part)))
        present = [c for c in cols if c in parquet.schema_arrow.names] if cols else None
        table = _conform(parquet.read(columns=present), schema)
        tables.append(table.select(cols) if cols else table)
    if not tables:
        empty = schema.empty_table()
        return empty if cols is None else empty.select(cols)
    return pa.concat_tables(tables)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part written before the schema gained a column (e.g. clips/ `failure`) reads with that column null, so
    the parts of an older build still concatenate with new ones on resume."""
    missing = [field for field in schema if field.name not in table.column_names]
    for field in missing:
        table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select([name for name in schema.names if name in table.column_names] +
                        [name for name in table.column_names if name not in schema.names])


def read_clip_table(output: str, columns: Iterable[str] | None = None) -> pa.Table:
    """All clips/ parts of an output as one table (empty, with the schema, when there are none)."""
    return read_parts(storage.join(output, "clips"), CLIP_SCHEMA, columns)
