"""Parquet part files, the unit every resumable table of the engine and trainer is written in (clips/, relations/,
attempts/, preferences, evaluation answers): a part appears whole or not at all (local: a temporary name, then a
rename; S3: one PUT), reads retry storage errors and then raise StorageUnavailable, and a file resume cannot use
is set aside into a quarantine folder, never deleted. A folder's parts are read in parallel (READ_THREADS at a time,
in order, a bounded number waiting), fetching only the byte ranges of the columns asked for. engine.dataset.writer
(the clips/ table) and engine.dataset.ledger (the attempts) build on it.
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from engine.core import storage

log = logging.getLogger(__name__)
T = TypeVar("T")


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
            _wait_or_give_up(path, err, attempt, attempts, backoff_s)
    raise AssertionError("unreachable")


def _wait_or_give_up(path: str, err: OSError, attempt: int, attempts: int, backoff_s: float) -> None:
    """After a storage error: sleep before the next attempt, or raise StorageUnavailable after the last one."""
    if attempt == attempts:
        raise StorageUnavailable(f"reading {path} failed {attempts} times, last: {err!r}; nothing was "
                                 "changed, run again when the storage answers") from err
    log.warning("reading %s failed (attempt %d of %d), retrying: %r", path, attempt, attempts, err)
    time.sleep(backoff_s * 2 ** (attempt - 1))



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



READ_THREADS = 16  # parts read at once: each read waits on the storage (S3 GETs), not on the CPU


class _StorageFault(OSError):
    """A read of the storage failed (retried), as opposed to bytes that are not Parquet (not retried)."""


class _StorageFile:
    """A storage file handle for pyarrow, which reads only the byte ranges it needs (the footer, then the chunks of
    the columns asked for), with the storage's errors told apart from pyarrow's own errors about the bytes."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.closed = handle, False

    def read(self, size: int = -1) -> bytes:
        try:
            return self.handle.read(size)
        except OSError as err:
            raise _StorageFault(str(err)) from err

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        self.closed = True


def read_part(fs: fsspec.AbstractFileSystem, path: str, columns: Iterable[str] | None = None,
              attempts: int = READ_ATTEMPTS, backoff_s: float | None = None) -> pa.Table:
    """The named columns of one part file (all without `columns`; a name the part lacks is skipped), fetching only
    their bytes. Storage errors are retried as in read_with_retries; bytes that are not Parquet raise pyarrow's error
    (pa.ArrowInvalid or OSError) at once; a missing file raises FileNotFoundError."""
    backoff_s = READ_BACKOFF_S if backoff_s is None else backoff_s
    wanted = list(columns) if columns is not None else None
    for attempt in range(1, attempts + 1):
        try:
            handle = fs.open(path, "rb")
        except FileNotFoundError:
            raise
        except OSError as err:
            _wait_or_give_up(path, err, attempt, attempts, backoff_s)
            continue
        try:
            with handle:
                parquet = pq.ParquetFile(_StorageFile(handle))
                present = [c for c in wanted if c in parquet.schema_arrow.names] if wanted is not None else None
                return parquet.read(columns=present, use_threads=False)
        except _StorageFault as err:  # pyarrow's own errors (bad bytes) pass through: not retried
            _wait_or_give_up(path, err, attempt, attempts, backoff_s)
    raise AssertionError("unreachable")


def map_parts(fn: Callable[[str], T], paths: Iterable[str], threads: int = READ_THREADS) -> Iterator[T]:
    """fn(path) for every path, `threads` at a time, results in the paths' order; at most 2 x threads results wait
    to be consumed, so a caller that folds them as they come holds a bounded number of parts."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        window: deque[Future[T]] = deque()
        try:
            for path in paths:
                window.append(pool.submit(fn, path))
                if len(window) >= 2 * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def iter_parts(directory: str, schema: pa.Schema, columns: Iterable[str] | None = None,
               threads: int = READ_THREADS) -> Iterator[pa.Table]:
    """The part-*.parquet files of a folder, one table each, read in parallel (`threads` at a time), only `columns`
    (in that order; a column an older part lacks reads as nulls of the schema's type)."""
    fs = storage.filesystem(directory)
    cols = list(columns) if columns is not None else None

    def read(part: str) -> pa.Table:
        table = _conform(read_part(fs, part, cols), schema)
        return table.select(cols) if cols is not None else table

    yield from map_parts(read, list_named(fs, storage.strip_protocol(directory), PART_PREFIX, ".parquet"), threads)


@contextmanager
def open_whole(directory: str, name: str) -> Iterator[BinaryIO]:
    """A handle to write `directory/name` in pieces, so that the file appears whole or not at all, like
    write_parquet_whole's (local: a temporary name renamed at the end; S3: an upload completed on close and dropped
    on an error), without holding the file in memory."""
    fs = storage.filesystem(directory)
    path = storage.strip_protocol(directory)
    fs.makedirs(path, exist_ok=True)
    final = f"{path}/{name}"
    if storage.is_remote(directory):
        handle = fs.open(final, "wb")
        try:
            yield handle
        except BaseException:
            handle.discard()  # s3fs: nothing uploaded (a multipart upload is aborted) ...
            handle.closed = True  # ... and nothing on garbage collection either
            raise
        handle.close()
        return
    with open(f"{final}.tmp", "wb") as handle:
        yield handle
    fs.mv(f"{final}.tmp", final)  # rename within one directory is atomic on POSIX


def read_parts(directory: str, schema: pa.Schema, columns: Iterable[str] | None = None) -> pa.Table:
    """All part-*.parquet files of a folder as one table (empty, with the schema, when there are none), read in
    parallel, only `columns` when given."""
    cols = list(columns) if columns else None
    tables = list(iter_parts(directory, schema, cols))
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
