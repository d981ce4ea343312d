"""Input listing: a folder or s3:// prefix of videos (with optional sidecar JSON), or a manifest.

The listing stays cheap and driver-side: it never opens media or sidecars (at 600K clips that would be
hours of sequential GETs); those reads happen in parallel inside the first stage.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from engine.core import storage
from engine.core.schema import clip_id_for

log = logging.getLogger(__name__)

# Manifest columns carried into the clip table as they are (null when absent): written by the corpus adapters.
CORPUS_COLUMNS = ("speaker", "emotion", "corpus_split", "corpus_extras")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")
MANIFEST_EXTENSIONS = (".jsonl", ".csv", ".parquet")

SOURCE_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("label", pa.string()),
        pa.field("source_video", pa.string()),
        # Manifest columns written by the corpus adapters (engine.dataset.corpora); see engine.core.schema.CLIP_FIELDS.
        pa.field("speaker", pa.string()),
        pa.field("emotion", pa.string()),
        pa.field("corpus_split", pa.string()),
        pa.field("corpus_extras", pa.string()),
        pa.field("annotation_raw", pa.string()),
        pa.field("annotation_uri", pa.string()),
    ]
)


class SourceError(ValueError):
    """The input cannot be listed at all (missing, empty manifest, no uri column)."""


def list_source(uri: str, dataset: str = "unknown", lang: str | None = None,
                source_video_pattern: str | None = None) -> pa.Table:
    """One row per input clip, deduplicated by clip id, in a stable order.

    `source_video` comes from the manifest's column of that name, else from `source_video_pattern` (a regex
    searched in the clip's URI: its group "video", else its first group, else the whole match), else it is
    the clip's own URI (every clip its own recording). A manifest's `speaker`, `emotion`, `corpus_split` and
    `corpus_extras` columns (the corpus adapters' output, jobs/prepare_corpora.py) travel with each clip into the
    clip table.
    """
    uri = storage.absolute(uri)
    if uri.lower().endswith(MANIFEST_EXTENSIONS):
        rows = _manifest_rows(uri, dataset, lang)
    else:
        rows = _folder_rows(uri, dataset, lang)
    rows = _dedupe(rows)
    _fill_source_video(rows, source_video_pattern)
    return pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA)


def _fill_source_video(rows: list[dict[str, Any]], pattern: str | None) -> None:
    regex = re.compile(pattern) if pattern else None
    unmatched = 0
    for row in rows:
        if row.get("source_video"):
            continue
        match = regex.search(row["source_uri"]) if regex else None
        if regex and not match:
            unmatched += 1
        row["source_video"] = _video_key(match) if match else row["source_uri"]
    if unmatched:
        log.warning("source_video_pattern %r did not match %d of %d clip URIs: those clips count as their "
                    "own recording", pattern, unmatched, len(rows))


def _video_key(match: re.Match[str]) -> str:
    if "video" in match.re.groupindex:
        return match.group("video")
    return match.group(1) if match.re.groups else match.group(0)


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(row["clip_id"], row)
    if len(seen) < len(rows):
        log.warning("input lists %d duplicate URIs; each clip is processed once", len(rows) - len(seen))
    return sorted(seen.values(), key=lambda r: r["source_uri"])


def _folder_rows(uri: str, dataset: str, lang: str | None) -> list[dict[str, Any]]:
    fs = storage.filesystem(uri)
    root = storage.strip_protocol(uri)
    if not fs.exists(root):
        raise SourceError(f"input {uri!r} does not exist")
    paths = sorted(fs.find(root))
    present = set(paths)
    rows = []
    for path in paths:
        if not path.lower().endswith(VIDEO_EXTENSIONS):
            continue
        sidecar = posixpath.splitext(path)[0] + ".json"
        source_uri = storage.as_uri(uri, path)
        rows.append(
            dict(
                clip_id=clip_id_for(source_uri),
                source_uri=source_uri,
                dataset=dataset,
                lang=lang,
                label=None,
                source_video=None,
                **dict.fromkeys(CORPUS_COLUMNS),
                annotation_raw=None,
                annotation_uri=storage.as_uri(uri, sidecar) if sidecar in present else None,
            )
        )
    if not rows:
        raise SourceError(f"input {uri!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return rows


def _read_manifest(uri: str) -> list[dict[str, Any]]:
    fs = storage.filesystem(uri)
    path = storage.strip_protocol(uri)
    with fs.open(path, "rb") as handle:
        data = handle.read()
    lower = uri.lower()
    if lower.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if lower.endswith(".csv"):
        return pacsv.read_csv(io.BytesIO(data)).to_pylist()
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise SourceError(f"{uri}: line {number} is not JSON: {err}") from None
    return records


def _manifest_rows(uri: str, dataset: str, lang: str | None) -> list[dict[str, Any]]:
    records = _read_manifest(uri)
    if not records:
        raise SourceError(f"manifest {uri!r} is empty")
    missing = [i for i, rec in enumerate(records, start=1) if not isinstance(rec, dict) or not rec.get("uri")]
    if missing:
        raise SourceError(f"manifest {uri!r}: records without a 'uri': {missing[:20]} ({len(missing)} in all)")
    base = storage.as_uri(uri, posixpath.dirname(storage.strip_protocol(uri)))
    return [_manifest_row(rec, base, dataset, lang) for rec in records]


def _manifest_row(rec: dict[str, Any], base: str, dataset: str, lang: str | None) -> dict[str, Any]:
    source_uri = _resolve(str(rec["uri"]), base)
    annotation = rec.get("annotation")
    if annotation is not None and not isinstance(annotation, str):
        annotation = json.dumps(annotation, ensure_ascii=False)
    sidecar = _text(rec.get("annotation_uri"))
    return dict(
        clip_id=clip_id_for(source_uri),
        source_uri=source_uri,
        dataset=_text(rec.get("dataset")) or dataset,
        lang=_text(rec.get("lang")) or lang,
        label=_text(rec.get("label")),
        source_video=_text(rec.get("source_video")),
        **{name: _json_text(rec.get(name)) for name in CORPUS_COLUMNS},
        annotation_raw=annotation or None,
        # A sidecar annotation named by the manifest (jobs/prepare_corpora.py --sidecar-annotations); an inline
        # `annotation` wins (engine.stages.annotation_check reads the sidecar only without one).
        annotation_uri=_resolve(sidecar, base) if sidecar else None,
    )


def _resolve(uri: str, base: str) -> str:
    """Relative URIs in a manifest are relative to the manifest itself, not to the process's cwd."""
    return uri if storage.is_remote(uri) or uri.startswith("/") else storage.join(base, uri)


def _json_text(value: Any) -> str | None:
    """A column value as text; an object (a JSON manifest's inline corpus_extras) as JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else None
    return _text(value)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
