"""Label files as rows of variables: CSV, JSON lines, a JSON list, or lines read with a regex.

A label row that cannot be read becomes a malformed entry (with its file and line), never an exception: one bad
line in a 10K-row CSV must not stop the other 9,999 from joining their clips.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec

from engine.dataset.corpora.spec import LabelSpec


@dataclass(frozen=True)
class Entry:
    """A malformed entry for the report: why, where (relative path, `file:line`, or a join key) and detail."""

    reason: str
    where: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "where": self.where, "detail": self.detail}


@dataclass(frozen=True)
class LabelRow:
    values: dict[str, str | None]
    where: str  # file:line (CSV: the row's last physical line)


@dataclass
class LabelRead:
    rows: list[LabelRow] = field(default_factory=list)
    malformed: list[Entry] = field(default_factory=list)
    lines_ignored: int = 0  # `lines` format: lines the pattern does not match (not labels, not errors)


def text_value(value: Any) -> str | None:
    """Every label value as text (CSV cells already are): 0 -> "0", None and "" -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False) if isinstance(
        value, (dict, list)) else str(value)
    text = text.strip()
    return text or None


def read_labels(fs: fsspec.AbstractFileSystem, root_path: str, rel_paths: list[str], spec: LabelSpec) -> LabelRead:
    out = LabelRead()
    pattern = re.compile(spec.file_pattern) if spec.file_pattern else None
    for rel in rel_paths:
        file_vars: dict[str, str | None] = {}
        if pattern:
            match = pattern.search(rel)
            if not match:
                out.malformed.append(Entry("unparsed_label_file", rel, f"does not match {spec.file_pattern!r}"))
                continue
            file_vars = {k: v for k, v in match.groupdict().items() if v is not None}
        with fs.open(f"{root_path}/{rel}", "rb") as handle:
            text = handle.read().decode("utf-8-sig", errors="replace")
        reader = _READERS[spec.format]
        reader(text, rel, spec, file_vars, out)
    return out


def _add(out: LabelRead, values: dict[str, Any], file_vars: dict[str, str | None], where: str) -> None:
    row = {str(k): text_value(v) for k, v in values.items()}
    out.rows.append(LabelRow({**row, **file_vars}, where))


def _read_csv(text: str, rel: str, spec: LabelSpec, file_vars: dict[str, str | None], out: LabelRead) -> None:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=spec.delimiter)
    try:
        for values in reader:
            if None in values:  # more cells than the header has names
                out.malformed.append(Entry("bad_label_row", f"{rel}:{reader.line_num}",
                                           f"{len(values[None])} cells beyond the header"))
                continue
            _add(out, values, file_vars, f"{rel}:{reader.line_num}")
    except csv.Error as err:
        out.malformed.append(Entry("bad_label_file", f"{rel}:{reader.line_num}", str(err)))


def _read_jsonl(text: str, rel: str, spec: LabelSpec, file_vars: dict[str, str | None], out: LabelRead) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as err:
            out.malformed.append(Entry("bad_label_row", f"{rel}:{number}", f"not JSON: {err}"))
            continue
        if not isinstance(values, dict):
            out.malformed.append(Entry("bad_label_row", f"{rel}:{number}", "not a JSON object"))
            continue
        _add(out, values, file_vars, f"{rel}:{number}")


def _read_json(text: str, rel: str, spec: LabelSpec, file_vars: dict[str, str | None], out: LabelRead) -> None:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        out.malformed.append(Entry("bad_label_file", rel, f"not JSON: {err}"))
        return
    for part in (spec.records or "").split(".") if spec.records else []:
        data = data.get(part) if isinstance(data, dict) else None
    if not isinstance(data, list):
        out.malformed.append(Entry("bad_label_file", rel, f"records {spec.records!r} is not a list"))
        return
    for index, values in enumerate(data):
        where = f"{rel}:{spec.records or ''}[{index}]"
        if isinstance(values, dict):
            _add(out, values, file_vars, where)
        else:
            out.malformed.append(Entry("bad_label_row", where, "not a JSON object"))


def _read_lines(text: str, rel: str, spec: LabelSpec, file_vars: dict[str, str | None], out: LabelRead) -> None:
    pattern = re.compile(spec.line_pattern or "")
    for number, line in enumerate(text.splitlines(), start=1):
        match = pattern.search(line.strip())
        if match:
            _add(out, match.groupdict(), file_vars, f"{rel}:{number}")
        elif line.strip():
            out.lines_ignored += 1


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "json": _read_json, "lines": _read_lines}
