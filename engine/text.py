"""Transcript normalisation and error rates (WER for space-delimited languages, CER for Chinese)."""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

import jiwer

# Sound events in SABER speech content are written <laughs>, <sigh>, <door slams>: not spoken words.
_SOUND_EVENT = re.compile(r"<[^<>]*>")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

ErrorMetric = Literal["wer", "cer"]


def strip_sound_events(text: str) -> str:
    return _SOUND_EVENT.sub(" ", text)


def normalise(text: str) -> str:
    """Lower case, sound events and punctuation removed, apostrophes kept inside words, spaces folded.

    Apostrophes are dropped rather than split on ("can't" -> "cant") so that ASR's and annotators'
    spellings of contractions agree. Hyphens become spaces ("well-known" -> "well known").
    """
    text = unicodedata.normalize("NFKC", strip_sound_events(text)).lower()
    text = re.sub(r"['\u2019`]", "", text)
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return " ".join(text.split())


def is_chinese(text: str, lang: str | None = None) -> bool:
    if lang:
        return lang.lower().split("-")[0] in {"zh", "cn", "yue"}
    return bool(_CJK.search(text))


def error_rate(reference: str, hypothesis: str, lang: str | None = None) -> tuple[ErrorMetric, float]:
    """Returns ("wer"|"cer", rate) of the hypothesis against the reference after normalisation.

    Chinese has no word boundaries, so it is scored per character with spaces removed. An empty
    reference is an error for the caller to handle: the rate is undefined.
    """
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        raise ValueError("reference transcript is empty after normalisation")
    if is_chinese(ref, lang):
        return "cer", float(jiwer.cer(ref.replace(" ", ""), hyp.replace(" ", "")))
    return "wer", float(jiwer.wer(ref, hyp))
