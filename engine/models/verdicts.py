"""Verdict schemas and strict parsing of model answers: one JSON object (optionally in a ```json fence), nothing else.

Each verdict has one pydantic model; its JSON Schema (`response_schema`) goes with the request so that backends
that can constrain decoding do (engine.models.constrained, the HTTP backend's response_format, vLLM's structured
outputs). The parsers below stay strict for backends and APIs that ignore the schema (then the repair re-ask).
String lengths are bounded so a constrained answer always ends: a grammar cannot close a string the model never
closes, and an answer cut at max_tokens is no verdict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from engine.models.backends.base import ResponseSchema

_FENCED = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class VerdictError(ValueError):
    """A model answer that does not follow the requested format; the message says how."""


REASON_MAX_CHARS = 400  # "one sentence"
ANNOTATION_MAX_CHARS = 2000  # one annotation field (the paper's longest, sentiment_analysis, runs ~1000)


class _Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as the parsers require


class ConsistencyAnswer(_Verdict):
    score: int = Field(ge=0, le=10)
    reason: str = Field(max_length=REASON_MAX_CHARS)


class RelationAnswer(_Verdict):
    relation: Literal["consistent", "inconsistent"]
    intensity: int = Field(ge=0, le=10)
    reason: str = Field(max_length=REASON_MAX_CHARS)


class AudioDescAnswer(_Verdict):
    speech_content: str = Field(max_length=ANNOTATION_MAX_CHARS)
    acoustic_feat: str = Field(max_length=ANNOTATION_MAX_CHARS)


class AnnotationAnswer(_Verdict):
    """The official SABER layout (engine.models.annotation), in its key order."""

    video_desc: str = Field(max_length=ANNOTATION_MAX_CHARS)
    audio_desc: AudioDescAnswer
    facial_exp_desc: str = Field(max_length=ANNOTATION_MAX_CHARS)
    body_lang_desc: str = Field(max_length=ANNOTATION_MAX_CHARS)
    sentiment_analysis: str = Field(max_length=ANNOTATION_MAX_CHARS)


def response_schema(model: type[BaseModel], name: str) -> ResponseSchema:
    return ResponseSchema(name, model.model_json_schema())


def scores_schema(name: str, keys: tuple[str, ...], low: int, high: int, reason: bool = True) -> ResponseSchema:
    """Integer scores in [low, high] for `keys` (plus a "reason" string): the evaluation judges' verdicts."""
    fields: dict[str, Any] = {key: (int, Field(ge=low, le=high)) for key in keys}
    if reason:
        fields["reason"] = (str, Field(max_length=REASON_MAX_CHARS))
    return response_schema(create_model(name, __base__=_Verdict, **fields), name)


ANNOTATION_SCHEMA = response_schema(AnnotationAnswer, "saber_annotation")
CONSISTENCY_SCHEMA = response_schema(ConsistencyAnswer, "consistency_verdict")
RELATION_SCHEMA = response_schema(RelationAnswer, "relation_verdict")


def parse_json_object(text: str | None) -> dict[str, Any]:
    body = (text or "").strip()
    fenced = _FENCED.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body.startswith("{") or not body.endswith("}"):
        raise VerdictError("answer is not a single JSON object")
    try:
        # strict=False: a raw tab or newline inside a string is still the answer meant (xgrammar's JSON strings
        # allow control characters that json.dumps would escape; so do some APIs).
        value = json.loads(body, strict=False)
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
