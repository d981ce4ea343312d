"""Benchmark manifests: read a .jsonl file, a .parquet file or a folder of Parquet parts (local or s3://) into
rows of ITEM_SCHEMA. `load_items` checks every record against its benchmark and raises one `ManifestError`
listing all the bad ones, by line (jsonl) or row (Parquet) number.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.core import storage
from train.evaluation.benchmarks import ITEM_SCHEMA, Benchmark, Item, ItemProblem, text_field


class ManifestError(ValueError):
    """A manifest with bad records; the message lists every one."""


def read_records(uri: str) -> list[tuple[str, Any]]:
    """(where, record) pairs: 'line N' of a .jsonl file, 'row N' of Parquet (a file or a folder of parts)."""
    fs, path = storage.filesystem(uri), storage.strip_protocol(uri)
    if not fs.exists(path):
        raise ManifestError(f"manifest {uri!r} does not exist")
    if path.endswith(".jsonl"):
        with fs.open(path, "rb") as handle:
            lines = handle.read().decode("utf-8").splitlines()
        return [(f"line {n}", _json_line(line)) for n, line in enumerate(lines, start=1) if line.strip()]
    if fs.isdir(path):
        files = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    elif path.endswith(".parquet"):
        files = [path]
    else:
        raise ManifestError(f"manifest {uri!r} must be a .jsonl file, a .parquet file or a folder of Parquet parts")
    tables = []
    for name in files:
        with fs.open(name, "rb") as handle:
            tables.append(pq.read_table(io.BytesIO(handle.read())))
    rows = pa.concat_tables(tables, promote_options="default").to_pylist() if tables else []
    return [(f"row {n}", row) for n, row in enumerate(rows, start=1)]


def _json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return ItemProblem(f"not JSON: {err.msg} at column {err.colno}")


def load_items(uri: str, benchmark: Benchmark, limit: int | None = None) -> list[Item]:
    """Every record checked; all problems raised at once as a ManifestError naming line/row and field."""
    uri = storage.absolute(uri)
    records = read_records(uri)
    if not records:
        raise ManifestError(f"manifest {uri!r} holds no records")
    path = storage.strip_protocol(uri).rstrip("/")  # relative clip paths are relative to the manifest('s folder)
    base = storage.as_uri(uri, path if storage.filesystem(uri).isdir(path) else posixpath.dirname(path))
    items, problems, seen = [], [], {}
    for where, record in records[:limit] if limit else records:
        try:
            item = _item(record, benchmark, base)
        except ItemProblem as err:
            problems.append(f"{where}: {err}")
            continue
        if item["item_id"] in seen:
            problems.append(f"{where}: item_id {item['item_id']!r} repeats {seen[item['item_id']]}")
            continue
        seen[item["item_id"]] = where
        items.append(item)
    if not problems:
        problems = benchmark.check_set(items)
    if problems:
        shown = "\n".join(problems[:50]) + (f"\n... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise ManifestError(f"{uri}: {len(problems)} bad record(s) for benchmark {benchmark.name} "
                            f"(required fields: source_uri, {', '.join(benchmark.required)}):\n{shown}")
    return items


def _item(record: Any, benchmark: Benchmark, base: str) -> Item:
    if isinstance(record, ItemProblem):
        raise record
    if not isinstance(record, dict):
        raise ItemProblem(f"expected an object, got {type(record).__name__}")
    uri_key = "source_uri" if "source_uri" in record or "uri" not in record else "uri"
    if missing := [k for k in (uri_key, *benchmark.required) if record.get(k) is None]:
        raise ItemProblem(f"missing {', '.join(missing)}")
    raw = text_field(record, uri_key)
    uri = raw if storage.is_remote(raw) or raw.startswith("/") else storage.join(base, raw)
    item: Item = dict.fromkeys(ITEM_SCHEMA.names)
    item.update(source_uri=uri, lang=record.get("lang") or None, **benchmark.fields(record))
    item["item_id"] = str(record.get("item_id") or record.get("clip_id") or _derived_id(item))
    return item


def _derived_id(item: Item) -> str:
    key = json.dumps([item["source_uri"], item["group"], item["question"]], ensure_ascii=False)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]
