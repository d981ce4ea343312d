"""Curation marks: what a person decided about clips in the data browser (engine.dataset.browse), for the next build.

A JSON Lines file (default OUT/curation.jsonl, or any path, local or s3://), one mark a line:
`{"clip_id", "action": "keep" | "drop" | "note", "note", "source_uri", "marked_at"}`, appended, never rewritten.
`read_curation` gives one decision a clip (the last keep/drop wins, notes accumulate) and `apply_curation` forces it
on a clips/ table: a build run with `curation=PATH` (engine.dataset.build.curate) applies it to the finished clips
before the report, sed/ and saber_test/; clips/ keeps the automatic verdicts. Kept apart from the browser so a build
applies marks without importing Flask.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from engine.core import storage

log = logging.getLogger(__name__)

CurationAction = Literal["keep", "drop", "note"]
ACTIONS: tuple[str, ...] = ("keep", "drop", "note")
# Build outputs the curation file must stay out of: the browser never writes into the build's data.
DATA_DIRS = ("clips", "relations", "sed", "saber_test", "attempts", "quarantine")


@dataclass(frozen=True)
class CurationMark:
    clip_id: str
    action: CurationAction
    note: str = ""
    source_uri: str | None = None
    marked_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"curation action must be one of {list(ACTIONS)}, got {self.action!r}")
        if self.action == "note" and not self.note.strip():
            raise ValueError("a note mark needs a note")


@dataclass(frozen=True)
class CurationDecision:
    """One clip's curation: the last keep/drop (None: only notes) and every note, oldest first."""

    action: Literal["keep", "drop"] | None
    notes: tuple[str, ...]


def default_curation_path(output: str) -> str:
    return storage.join(storage.absolute(output), "curation.jsonl")


def check_curation_path(output: str, path: str) -> None:
    """The curation file may sit beside the build's data, never inside it."""
    out, target = storage.absolute(output).rstrip("/"), storage.absolute(path)
    for name in DATA_DIRS:
        if target.startswith(storage.join(out, name) + "/"):
            raise ValueError(f"curation file {path} is inside the build's {name}/: the browser never writes there")


def append_mark(path: str, mark: CurationMark) -> None:
    """One JSON line appended (local: an append; s3://: the object read and written again whole, one PUT)."""
    line = (json.dumps(asdict(mark), ensure_ascii=False) + "\n").encode()
    fs, bare = storage.filesystem(path), storage.strip_protocol(path)
    if not storage.is_remote(path):
        Path(bare).parent.mkdir(parents=True, exist_ok=True)
        with open(bare, "ab") as handle:
            handle.write(line)
        return
    before = fs.cat_file(bare) if fs.exists(bare) else b""
    fs.pipe_file(bare, before + line)


def read_marks(path: str) -> list[CurationMark]:
    fs, bare = storage.filesystem(path), storage.strip_protocol(path)
    if not fs.exists(bare):
        return []
    marks = []
    for number, line in enumerate(fs.cat_file(bare).decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            marks.append(CurationMark(**json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path} line {number}: not a curation mark ({err})") from None
    return marks


def read_curation(path: str) -> dict[str, CurationDecision]:
    """Each marked clip's decision: the last keep/drop wins, notes accumulate."""
    actions: dict[str, Literal["keep", "drop"] | None] = {}
    notes: dict[str, list[str]] = {}
    for mark in read_marks(path):
        actions.setdefault(mark.clip_id, None)
        notes.setdefault(mark.clip_id, [])
        if mark.action != "note":
            actions[mark.clip_id] = mark.action
        if mark.note:
            notes[mark.clip_id].append(mark.note)
    return {cid: CurationDecision(actions[cid], tuple(notes[cid])) for cid in actions}


# Stages whose rejection means the clip has no usable media: a keep cannot bring it back.
MEDIA_STAGES = frozenset({"probe", "decode"})


def apply_curation(table: pa.Table, decisions: Mapping[str, CurationDecision]) -> pa.Table:
    """A clips/ table with the curation forced: drop -> rejected at stage `curation`, reason `curated_drop`, the
    notes as detail; keep -> kept over an automatic rejection (not over a probe/decode one: no media), the
    rejection it overrode recorded in the provenance JSON under "curation". Clips not marked are untouched."""
    rows = table.to_pylist()
    for row in rows:
        decision = decisions.get(row["clip_id"])
        if decision is None or decision.action is None:
            continue
        note = "; ".join(decision.notes)
        if decision.action == "drop" and row["status"] == "kept":
            row.update(status="rejected", reject_stage="curation", reject_reason="curated_drop",
                       reject_detail=(note or "dropped by a curator")[:500], failure="final")
        elif decision.action == "keep" and row["status"] == "rejected":
            if row["reject_stage"] in MEDIA_STAGES:
                log.warning("curation: clip %s kept by a curator has no usable media (%s/%s); left rejected",
                            row["clip_id"], row["reject_stage"], row["reject_reason"])
                continue
            provenance = json_or_text(row.get("provenance")) or {}
            provenance = provenance if isinstance(provenance, dict) else {"earlier": provenance}
            provenance["curation"] = f"kept over {row['reject_stage']}/{row['reject_reason']}" + (
                f": {note}" if note else "")
            row.update(status="kept", reject_stage=None, reject_reason=None, reject_detail=None, failure=None,
                       provenance=json.dumps(provenance, ensure_ascii=False))
    return pa.Table.from_pylist(rows, schema=table.schema)


def json_or_text(value: str | None) -> Any:
    """A JSON column's value parsed, or the text as it is where it is not JSON."""
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
