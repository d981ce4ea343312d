"""Strict readers of model and judge answers for the evaluation harness.

Each parser returns the answer in canonical form or raises `AnswerError` saying what is wrong; none guesses.
An answer that needs guessing is unparseable, and the metrics count it as wrong (see `metrics`), so a lenient
parser would flatter a model that ignores the requested format. Use `or_none` to turn the error into the
None the metrics expect, after logging the reason if you want it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

from engine.models.verdicts import VerdictError, parse_json_object
from train.evaluation.judge_metrics import (
    EMER_CRITERIA,
    EMER_SCORE_RANGE,
    SABER_TEST_DIMENSIONS,
    SABER_TEST_SCORE_RANGE,
)

P = ParamSpec("P")
T = TypeVar("T")


class AnswerError(VerdictError):
    """An answer that does not follow the requested format; a ValueError, like the engine's verdict errors."""


def or_none(parse: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
    """The parsed answer, or None (unparseable) when the parser rejects it."""
    try:
        return parse(*args, **kwargs)
    except VerdictError:  # AnswerError and the engine's JSON errors; anything else is a bug and propagates
        return None


def _text(text: str | None) -> str:
    body = (text or "").strip()
    if not body:
        raise AnswerError("empty answer")
    return body


# ---------------------------------------------------------------- EmoBench-M: {'emotion': 'label'}

# The key is matched in any case so that a differently cased key still counts as a second answer below.
_EMOTION_KEY = re.compile(r"""(['"])emotion\1\s*:""", re.IGNORECASE)
_EMOTION_DICT = re.compile(r"""\{\s*(['"])emotion\1\s*:\s*(['"])([^'"{}\n]*)\2\s*\}""", re.IGNORECASE)


def _norm_label(label: str) -> str:
    return " ".join(label.split()).casefold()


def parse_emobench_m_answer(text: str | None, labels: Collection[str]) -> str:
    """The label of an `{'emotion': 'label'}` answer, spelled as in `labels`.

    Single or double quotes, any surrounding text or code fence. Every `'emotion':` key in the answer must belong
    to a dict of exactly that form, the label must be one of `labels` (case-insensitive), and repeated dicts
    must agree; anything else is unparseable.
    """
    body = _text(text)
    allowed = {_norm_label(label): label for label in labels}
    found = [m.group(3) for m in _EMOTION_DICT.finditer(body)]
    if not found:
        raise AnswerError("no {'emotion': '<label>'} object in the answer")
    if len(found) != len(_EMOTION_KEY.findall(body)):
        raise AnswerError("an 'emotion' key outside a {'emotion': '<label>'} object")
    chosen = {_norm_label(label) for label in found}
    if len(chosen) > 1:
        raise AnswerError(f"answer gives several labels: {sorted(chosen)}")
    label = chosen.pop()
    if label not in allowed:
        raise AnswerError(f"label {label!r} is not one of {sorted(labels)}")
    return allowed[label]


# ---------------------------------------------------------------- multiple choice and Yes/No

_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*",
                            re.IGNORECASE)


def parse_choice(text: str | None, choices: str = "ABCD") -> str:
    """The option letter of a multiple-choice answer.

    Accepted: the letter alone ("B", "(B)", "B."), the letter opening the option text ("(B) The man...",
    "B. The man..."), each optionally after "Answer:" / "The answer is". A bare letter must be followed by
    punctuation before any text, so the article in "A man smiles" is not read as option A; and an answer that
    names a second option in parentheses ("(B), or maybe (C)") is rejected.
    """
    body = _ANSWER_PREFIX.sub("", _text(text), count=1)
    letters = re.escape(choices)
    alone = re.fullmatch(rf"\(?([{letters}])\)?[.:)]?", body, re.IGNORECASE)
    opening = re.match(rf"\(([{letters}])\)|([{letters}])[.:)](?:\s|$)", body)
    if alone:
        letter = alone.group(1).upper()
    elif opening:
        letter = opening.group(1) or opening.group(2)
    else:
        raise AnswerError(f"no option letter ({', '.join(choices)}) at the start of the answer")
    others = set(re.findall(rf"\(([{letters}])\)", body)) - {letter}
    if others:
        raise AnswerError(f"answer names option {letter} and also {sorted(others)}")
    return letter


_YES_NO = re.compile(r"(yes|no)(?=$|[\s.,!;:])", re.IGNORECASE)


def parse_yes_no(text: str | None, letters: Mapping[str, str] | None = None) -> Literal["Yes", "No"]:
    """Yes or No from an answer that starts with the word ("No.", "yes, the tone..."), optionally after
    "Answer:". With `letters` (e.g. {"A": "Yes", "B": "No"}, as EmoReAIM prints its options) the option letter
    is accepted too; if the word follows the letter ("(A) Yes") the two must agree."""
    body = _ANSWER_PREFIX.sub("", _text(text), count=1)
    word = _YES_NO.match(body)
    if word:
        return "Yes" if word.group(1).lower() == "yes" else "No"
    if not letters:
        raise AnswerError("answer does not start with Yes or No")
    if bad := set(letters.values()) - {"Yes", "No"}:
        raise ValueError(f"letters must map to 'Yes' or 'No', got {sorted(bad)}")
    letter = parse_choice(body, "".join(letters))
    answer = letters[letter]
    after = re.sub(rf"^\(?{re.escape(letter)}[).:]?\s*", "", body)
    word = _YES_NO.match(after)
    if word and word.group(1).capitalize() != answer:
        raise AnswerError(f"option {letter} means {answer} but the answer says {word.group(1)}")
    return "Yes" if answer == "Yes" else "No"


# ---------------------------------------------------------------- judge verdicts


def _score(value: Any, key: str, low: int, high: int) -> int:
    # bool is an int subclass in Python, and 2.0 is a float in JSON: neither is an integer score
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AnswerError(f"{key} must be an integer {low}-{high}, got {value!r}")
    return value


def _scores_of(data: Mapping[str, Any], keys: Sequence[str], low: int, high: int,
               optional_keys: Collection[str]) -> dict[str, int]:
    if missing := [key for key in keys if key not in data]:
        raise AnswerError(f"missing keys {missing}")
    if extra := sorted(set(data) - set(keys) - set(optional_keys)):
        raise AnswerError(f"unexpected keys {extra}")
    return {key: _score(data[key], key, low, high) for key in keys}


def parse_judge_scores(
    text: str | None, keys: Sequence[str], low: int, high: int, optional_keys: Collection[str] = ()
) -> dict[str, int]:
    """Integer scores in [low, high] for exactly `keys`, from one JSON object (a ```json fence allowed, no other
    text). `optional_keys` (e.g. a "reason") may appear too and are not returned; any other key is rejected."""
    return _scores_of(parse_json_object(text), keys, low, high, optional_keys)


def _scores_with_reason(text: str | None, keys: Sequence[str], low: int, high: int) -> dict[str, int]:
    data = parse_json_object(text)
    scores = _scores_of(data, keys, low, high, optional_keys=("reason",))
    if not isinstance(data.get("reason", ""), str):
        raise AnswerError("reason must be a string")
    return scores


def parse_saber_test_verdict(text: str | None) -> dict[str, int]:
    """The six SABER-Test dimensions scored 0-3, with an optional string "reason"."""
    return _scores_with_reason(text, SABER_TEST_DIMENSIONS, *SABER_TEST_SCORE_RANGE)


def parse_emer_verdict(
    text: str | None, criteria: Sequence[str] = EMER_CRITERIA, score_range: tuple[int, int] = EMER_SCORE_RANGE
) -> dict[str, int]:
    """EMER judge scores for `criteria`, with an optional string "reason"."""
    return _scores_with_reason(text, criteria, *score_range)
