"""The official SABER annotation layout: parsing, validation and flattening into clip columns.

    {"video_desc": str,
     "audio_desc": {"speech_content": str, "acoustic_feat": str},
     "facial_exp_desc": str, "body_lang_desc": str, "sentiment_analysis": str}
"""

from __future__ import annotations

import json
from typing import Any

from engine.core.schema import ANNOTATION_FIELDS

_TOP_LEVEL = ("video_desc", "facial_exp_desc", "body_lang_desc", "sentiment_analysis")
_AUDIO = ("speech_content", "acoustic_feat")


class AnnotationError(ValueError):
    """The annotation text is not valid SABER JSON; the message says what is wrong."""


def parse_annotation(text: str) -> dict[str, str]:
    """Parses and validates SABER JSON; returns the six fields flattened (speech_content at top level)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    return flatten_annotation(data)


def flatten_annotation(data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise AnnotationError(f"expected a JSON object, got {type(data).__name__}")
    audio = data.get("audio_desc")
    problems = []
    if audio is None:
        problems.append("audio_desc: missing")
    elif not isinstance(audio, dict):
        problems.append(f"audio_desc: expected an object, got {type(audio).__name__}")
    audio = audio if isinstance(audio, dict) else {}
    fields = {key: data.get(key) for key in _TOP_LEVEL} | {key: audio.get(key) for key in _AUDIO}
    for key, value in fields.items():
        where = f"audio_desc.{key}" if key in _AUDIO else key
        if value is None:
            problems.append(f"{where}: missing")
        elif not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {type(value).__name__}")
    if problems:
        raise AnnotationError("; ".join(problems))
    return {key: fields[key] for key in ANNOTATION_FIELDS}


def to_official(fields: dict[str, Any]) -> dict[str, Any]:
    """The nested official layout from flattened clip columns (the inverse of flatten_annotation)."""
    return {
        "video_desc": fields["video_desc"],
        "audio_desc": {"speech_content": fields["speech_content"], "acoustic_feat": fields["acoustic_feat"]},
        "facial_exp_desc": fields["facial_exp_desc"],
        "body_lang_desc": fields["body_lang_desc"],
        "sentiment_analysis": fields["sentiment_analysis"],
    }
