"""Parquet part files, the unit every resumable table of the engine and trainer is written in (clips/, relations/,
attempts/, preferences, evaluation answers): a part appears whole or not at all (local: a temporary name, then a
rename; S3: one PUT), reads retry storage errors and then raise StorageUnavailable, and a file resume cannot use
is set aside into a quarantine folder, never deleted. engine.dataset.writer (the clips/ table) and engine.dataset.ledger
(the attempts) build on it.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from engine.core import storage

log = logging.getLogger(__name__)


PART_PREFIX = "part-"


QUARANTINE_DIR = "quarantine"


READ_ATTEMPTS = 4  # a part read that fails this often for a storage reason stops the rerun


READ_BACKOFF_S = 0.5  # doubled after each failed attempt



class StorageUnavailable(OSError):
    """A read kept failing for a reason of the storage: a fault of the world, retried by the next run."""



def list_named(fs: fsspec.AbstractFileSystem, path: str, prefix: str, suffix: str) -> list[str]:
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
    for part in list_named(fs, storage.strip_protocol(directory), PART_PREFIX, ".parquet"):
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
