"""Strict parsing of model answers: one JSON object (optionally in a ```json fence) and nothing else."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

_FENCED = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class VerdictError(ValueError):
    """A model answer that does not follow the requested format; the message says how."""


def parse_json_object(text: str | None) -> dict[str, Any]:
    body = (text or "").strip()
    fenced = _FENCED.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body.startswith("{") or not body.endswith("}"):
        raise VerdictError("answer is not a single JSON object")
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise VerdictError(f"invalid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(value, dict):
        raise VerdictError("answer is not a JSON object")
    return value


def _int_in(value: Any, low: int, high: int, name: str) -> int:
    # bool is an int subclass in Python; a judge answering true is not answering a score.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VerdictError(f"{name} must be an integer {low}-{high}, got {value!r}")
    return value


def _keys(data: dict[str, Any], expected: set[str]) -> None:
    if set(data) != expected:
        raise VerdictError(f"expected keys {sorted(expected)}, got {sorted(data)}")


@dataclass(frozen=True)
class ConsistencyVerdict:
    score: int
    reason: str


@dataclass(frozen=True)
class RelationVerdict:
    relation: Literal["consistent", "inconsistent"]
    intensity: int
    reason: str


def parse_consistency(text: str | None) -> ConsistencyVerdict:
    data = parse_json_object(text)
    _keys(data, {"score", "reason"})
    if not isinstance(data["reason"], str):
        raise VerdictError("reason must be a string")
    return ConsistencyVerdict(_int_in(data["score"], 0, 10, "score"), data["reason"])


def parse_relation(text: str | None) -> RelationVerdict:
    data = parse_json_object(text)
    _keys(data, {"relation", "intensity", "reason"})
    if data["relation"] not in ("consistent", "inconsistent"):
        raise VerdictError(f"relation must be consistent or inconsistent, got {data['relation']!r}")
    if not isinstance(data["reason"], str):
        raise VerdictError("reason must be a string")
    return RelationVerdict(data["relation"], _int_in(data["intensity"], 0, 10, "intensity"), data["reason"])
