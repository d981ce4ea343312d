"""Writing what the adapters produce: the manifest the engine reads (engine.dataset.sources) and the report beside it.

    manifest.parquet         uri, dataset, lang, label, emotion, speaker, source_video, corpus_split,
                             corpus_extras (JSON text), annotation_uri
    manifest.report.json     per corpus: counts of files, rows, skipped (by reason), malformed (by reason) and
                             every malformed entry, labels, unified emotions, speakers, recordings, splits

`.parquet`, `.jsonl` and `.csv` outputs, local or s3:// (engine.core.storage).
"""

from __future__ import annotations

import io
import json
import posixpath
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from engine.core import storage
from engine.dataset.corpora.adapter import CorpusError, prepare_corpus
from engine.dataset.corpora.spec import CorpusSpec

MANIFEST_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("dataset", pa.string()),
    pa.field("lang", pa.string()),
    pa.field("label", pa.string()),  # the corpus's own label
    pa.field("emotion", pa.string()),  # unified (engine.dataset.corpora.emotions)
    pa.field("speaker", pa.string()),
    pa.field("source_video", pa.string()),
    pa.field("corpus_split", pa.string()),
    pa.field("corpus_extras", pa.string()),
    pa.field("annotation_uri", pa.string()),
])
MANIFEST_EXTENSIONS = (".parquet", ".jsonl", ".csv")


def report_uri(manifest: str) -> str:
    """`out/manifest.parquet` -> `out/manifest.report.json`."""
    return posixpath.splitext(manifest)[0] + ".report.json"


def prepare_manifest(corpora: list[tuple[CorpusSpec, str]], output: str,
                     sidecar_annotations: bool = False) -> dict[str, Any]:
    """Runs each (spec, root), writes one manifest with every corpus's rows and the report; returns the report."""
    if not output.lower().endswith(MANIFEST_EXTENSIONS):
        raise CorpusError(f"output {output!r} must end in one of {', '.join(MANIFEST_EXTENSIONS)}")
    names = [spec.name for spec, _ in corpora]
    if len(set(names)) < len(names):
        raise CorpusError(f"a corpus is given twice: {names}")
    rows: list[dict[str, Any]] = []
    sections = {}
    for spec, root in corpora:
        result = prepare_corpus(spec, root, sidecar_annotations)
        rows += result.rows
        sections[spec.name] = result.report
    output = storage.absolute(output)
    write_manifest(output, rows)
    report = {"manifest": output, "rows": len(rows),
              "malformed": sum(sum(s["malformed"].values()) for s in sections.values()),
              "skipped": dict(sum((Counter(s["skipped"]) for s in sections.values()), Counter())),
              "corpora": sections}
    _write_bytes(report_uri(output), json.dumps(report, indent=2, ensure_ascii=False).encode("utf-8"))
    return report


def write_manifest(output: str, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    lower = output.lower()
    buffer = io.BytesIO()
    if lower.endswith(".parquet"):
        pq.write_table(table, buffer)
    elif lower.endswith(".csv"):
        pacsv.write_csv(table, buffer)
    else:
        buffer.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()).encode("utf-8"))
    _write_bytes(output, buffer.getvalue())


def _write_bytes(uri: str, data: bytes) -> None:
    fs = storage.filesystem(uri)
    path = storage.strip_protocol(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
