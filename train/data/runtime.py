"""The trainer's Ray Data plans: records in, encoded examples out, reference log-probs added. The one module of the
data path that imports Ray (the encoders and scorers it runs are plain classes in sed_data, preference_data and
reference).

Cluster runs stream: a pool of actors (the processor, or the reference, loaded once per actor) feeds the training
workers. Small CPU runs (demos, smoke runs, tests) materialise the encoded examples instead, and when the table is
at most `data.driver_max_rows` records they encode in the driver: a pool of one actor spends longer starting (a
process that imports torch and transformers, loads the processor) than on a few dozen records, and every run (a
resume, each CA-DPO round) would pay for it again. Either way the training loop gets the same blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockAccessor

from engine.core import storage

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]


def read_records(uri: str, limit: int | None = None) -> ray.data.Dataset:
    """Records from a folder of Parquet parts (sed/, a preference table), or a .jsonl / .parquet file."""
    fs, path = storage.arrow_filesystem(storage.absolute(uri))
    if path.endswith(".jsonl"):  # pyarrow's JSON reader takes one object per line (`lines=True` refuses a filesystem)
        ds = ray.data.read_json(path, filesystem=fs)
    else:
        ds = ray.data.read_parquet(path, filesystem=fs)
    return ds.limit(limit) if limit else ds


def count_records(uri: str, limit: int | None = None) -> int:
    """Rows of a records table without reading it: Parquet footers, or the lines of a .jsonl file."""
    import pyarrow.dataset as pads

    fs, path = storage.arrow_filesystem(storage.absolute(uri))
    if path.endswith(".jsonl"):
        with fs.open_input_stream(path) as stream:
            rows = sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
    else:
        rows = pads.dataset(path, filesystem=fs, format="parquet").count_rows()
    return min(rows, limit) if limit else rows


def in_driver(materialize: bool, uri: str, limit: int | None, max_rows: int) -> bool:
    """Whether a run encodes in the driver: a materialised (CPU) run of at most `max_rows` records."""
    return materialize and max_rows > 0 and count_records(uri, limit) <= max_rows


def _table_batches(uri: str, limit: int | None, batch_size: int) -> Iterator[Batch]:
    """The records as numpy batches, converted the way Ray Data converts them for map_batches."""
    fs, path = storage.arrow_filesystem(storage.absolute(uri))
    if path.endswith(".jsonl"):
        import pyarrow.json as pajson

        with fs.open_input_stream(path) as stream:
            table = pajson.read_json(stream)
    else:
        import pyarrow.dataset as pads

        table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    table = table.slice(0, limit) if limit else table
    for start in range(0, table.num_rows, batch_size):
        yield BlockAccessor.for_block(table.slice(start, batch_size)).to_batch_format("numpy")


def _dataset(batches: Iterator[Batch]) -> ray.data.MaterializedDataset:
    """Batches as blocks, converted the way map_batches converts its outputs (tensor columns included)."""
    blocks = [BlockAccessor.batch_to_block(batch) for batch in batches if len(next(iter(batch.values()), ()))]
    return ray.data.from_blocks(blocks) if blocks else ray.data.from_items([]).materialize()


def encode(uri: str, limit: int | None, make: Callable[..., Callable[[Batch], Batch]], kwargs: dict[str, Any], *,
           batch_size: int, concurrency: int, materialize: bool, driver_max_rows: int) -> ray.data.Dataset:
    """`make(**kwargs)` (an encoder class: loads its processor, then maps a batch of records to examples) over the
    records at `uri`: in the driver for a small CPU run, else in a Ray Data actor pool."""
    if in_driver(materialize, uri, limit, driver_max_rows):
        encoder = make(**kwargs)
        log.info("encoding %s in the driver (a small CPU run)", uri)
        return _dataset(encoder(batch) for batch in _table_batches(uri, limit, batch_size))
    ds = read_records(uri, limit).map_batches(make, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                                              batch_format="numpy",
                                              compute=ray.data.ActorPoolStrategy(size=concurrency))
    return ds.materialize() if materialize else ds


def score(examples: ray.data.Dataset, make: Callable[..., Callable[[Batch], Batch]], kwargs: dict[str, Any], *,
          batch_size: int, concurrency: int, num_gpus: int, driver: bool) -> pa.Table:
    """`make(**kwargs)` (a scorer: loads its model, then maps a batch of examples to a few columns) over every
    example; the small result as one Arrow table. In the driver when the examples were encoded there."""
    if driver:
        scorer = make(**kwargs)
        tables = [pa.table(scorer(batch)) for batch in examples.iter_batches(batch_size=batch_size,
                                                                              batch_format="numpy")]
        return pa.concat_tables(tables)
    scored = examples.map_batches(make, batch_size=batch_size, batch_format="numpy", fn_constructor_kwargs=kwargs,
                                  compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=num_gpus)
    return pa.concat_tables(ray.get(scored.to_arrow_refs()))


def add_columns(examples: ray.data.Dataset, fn: Callable[..., Batch], fn_kwargs: dict[str, Any], *,
                materialize: bool, driver: bool) -> ray.data.Dataset:
    """`fn(batch, **fn_kwargs)` over every example (a cheap, row-wise addition such as looked-up columns)."""
    if driver:
        return _dataset(fn(batch, **fn_kwargs) for batch in examples.iter_batches(batch_size=None,
                                                                                   batch_format="numpy"))
    attached = examples.map_batches(fn, fn_kwargs=fn_kwargs, batch_format="numpy")
    return attached.materialize() if materialize else attached
