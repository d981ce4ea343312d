"""train.data.runtime: a small CPU run encodes in the driver, a large or streamed one in an actor pool, and the training
loop cannot tell the two apart (same rows, same tensor columns)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.data import runtime


class Encoder:
    """Stands in for SedPreprocessor: ragged arrays out, one record dropped (as unusable records are)."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def __call__(self, batch):
        keep = [i for i, n in enumerate(batch["n"]) if n != 3]
        return {"clip_id": [batch["clip_id"][i] for i in keep],
                "input_ids": [np.arange(batch["n"][i], dtype=np.int64) * self.scale for i in keep],
                "features": [np.full((2, batch["n"][i]), 0.5, dtype=np.float32) for i in keep]}


class Scorer:
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self, batch):
        return {"clip_id": batch["clip_id"], "score": np.array([len(x) + self.offset for x in batch["input_ids"]])}


def _add_total(batch, bonus):
    return {**batch, "total": np.array([x.sum() + bonus for x in batch["input_ids"]])}


@pytest.fixture
def records(tmp_path):
    folder = tmp_path / "sed"
    folder.mkdir()
    rows = [{"clip_id": f"c{i}", "n": i + 1} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(rows[:4]), folder / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[4:]), folder / "part-00001.parquet")
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, jsonl


def test_counts_come_from_footers_and_lines_and_decide_where_to_encode(records):
    folder, jsonl = records
    assert runtime.count_records(str(folder)) == runtime.count_records(str(jsonl)) == 7
    assert runtime.count_records(str(folder), limit=5) == 5
    assert runtime.in_driver(True, str(folder), None, 7)
    assert not runtime.in_driver(True, str(folder), None, 6)  # one row too many
    assert runtime.in_driver(True, str(folder), 6, 6)  # the limit counts
    assert not runtime.in_driver(True, str(folder), None, 0)  # 0: always the pool
    assert not runtime.in_driver(False, str(folder), None, 100)  # streamed (GPU) runs: always the pool


def _rows(ds):
    return sorted(({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}
                   for row in ds.take_all()), key=lambda r: r["clip_id"])


@pytest.mark.parametrize("source", ["parquet", "jsonl"])
def test_driver_and_actor_pool_give_the_same_examples_scores_and_columns(local_ray, records, source):
    uri = str(records[0] if source == "parquet" else records[1])
    kwargs = {"scale": 10}
    common = {"batch_size": 3, "concurrency": 1, "materialize": True}
    pooled = runtime.encode(uri, None, Encoder, kwargs, driver_max_rows=0, **common)
    local = runtime.encode(uri, None, Encoder, kwargs, driver_max_rows=64, **common)
    assert _rows(local) == _rows(pooled)
    assert [r["clip_id"] for r in _rows(local)] == ["c0", "c1", "c3", "c4", "c5", "c6"]  # c2 (n=3) dropped
    assert _rows(local)[2]["input_ids"] == [0, 10, 20, 30] and _rows(local)[2]["features"] == [[0.5] * 4] * 2
    assert local.schema().names == pooled.schema().names
    assert str(local.schema().types) == str(pooled.schema().types)  # the same (tensor) column types

    scored = {driver: runtime.score(ds, Scorer, {"offset": 0.5}, batch_size=2, concurrency=1, num_gpus=0,
                                    driver=driver) for driver, ds in ((True, local), (False, pooled))}
    pairs = {driver: sorted(zip(*table.to_pydict().values(), strict=True)) for driver, table in scored.items()}
    assert pairs[True] == pairs[False] == [("c0", 1.5), ("c1", 2.5), ("c3", 4.5), ("c4", 5.5), ("c5", 6.5),
                                           ("c6", 7.5)]

    added = [runtime.add_columns(ds, _add_total, {"bonus": 1}, materialize=True, driver=driver)
             for driver, ds in ((True, local), (False, pooled))]
    assert _rows(added[0]) == _rows(added[1])
    assert [r["total"] for r in _rows(added[0])] == [1, 11, 61, 101, 151, 211]  # 10 * n(n-1)/2 + 1
