"""The `clips/` table writer, which is also the resume checkpoint.

A part file appears whole or not at all (local: write to a temporary name, then rename; S3: one PUT), so
the set of clip ids in readable part files is exactly the set of finished clips. A rerun reads those ids
and skips them. Resume never deletes: a read that fails for a reason of the storage (throttling, a timeout, a
dropped connection) is retried, and raises if it keeps failing, so the rerun stops with nothing lost; a part
whose bytes are not Parquet (not ours, or cut short) and a temporary file of an interrupted write are moved to
OUT/quarantine/ with a log line, and their clips are done again.

Only finished clips are written (kept, rejected for good, or given up): a clip that failed for a reason of the
world (engine.core.failures: retryable) goes to the attempt ledger (engine.dataset.ledger, OUT/attempts/clips/) instead,
so the next run does it again, until `max_attempts` runs have failed it and it is written as `gave_up`. The part-file
primitives (written whole, read with retries, set aside) are engine.core.parts'.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone

import pyarrow as pa

from engine.core import storage
from engine.core.failures import RETRYABLE
from engine.core.parts import (
    PART_PREFIX,
    QUARANTINE_DIR,
    StorageUnavailable,
    list_named,
    map_parts,
    read_part,
    read_parts,
    read_with_retries,
    set_aside,
    write_parquet_whole,
)
from engine.core.schema import CLIP_SCHEMA
from engine.dataset.ledger import AttemptLedger

log = logging.getLogger(__name__)

# The part-file primitives live in engine.core.parts; the clips/ table's users have always found them here.
__all__ = ["PART_PREFIX", "QUARANTINE_DIR", "ClipTableWriter", "StorageUnavailable", "read_clip_table", "read_parts",
           "read_with_retries", "set_aside", "write_parquet_whole"]


class ClipTableWriter:
    def __init__(self, output: str, flush_rows: int = 64, flush_seconds: float = 15.0,
                 run_id: str | None = None, max_attempts: int = 3) -> None:
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

    @property
    def parts_written(self) -> int:
        """Parts this writer has committed so far."""
        return self._parts

    # -- resume ---------------------------------------------------------------------------------------
    def part_files(self) -> list[str]:
        return list_named(self.fs, self.path, PART_PREFIX, ".parquet")

    def finished_ids(self) -> set[str]:
        """Clip ids already written by earlier runs; what a killed run left unusable is set aside, not deleted."""
        for stray in list_named(self.fs, self.path, PART_PREFIX, ".tmp"):
            set_aside(self.fs, stray, self.quarantine, "the temporary file of an interrupted write")
        ids: set[str] = set()
        parts = self.part_files()
        for part, column in zip(parts, map_parts(self._read_ids, parts), strict=True):  # parallel, clip_id only
            if isinstance(column, Exception):
                set_aside(self.fs, part, self.quarantine, f"not a readable clips part ({column})")
                continue
            ids.update(column.to_pylist())
        self._written_ids |= ids
        self.ledger.load()
        return ids

    def _read_ids(self, part: str) -> pa.ChunkedArray | Exception:
        """A part's clip ids, or the error saying its bytes are not a readable part; storage errors raise (retried
        first), so that a rerun stops with nothing lost rather than doing clips again."""
        try:
            return read_part(self.fs, part, ["clip_id"]).column("clip_id")
        except (StorageUnavailable, FileNotFoundError):
            raise
        except (pa.ArrowInvalid, OSError, KeyError) as err:  # the content itself is bad (or has no clip_id)
            return err

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


def read_clip_table(output: str, columns: Iterable[str] | None = None) -> pa.Table:
    """All clips/ parts of an output as one table (empty, with the schema, when there are none)."""
    return read_parts(storage.join(output, "clips"), CLIP_SCHEMA, columns)
