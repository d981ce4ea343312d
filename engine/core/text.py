"""Transcript normalisation and error rates (WER for space-delimited languages, CER for Chinese).

The annotation and the ASR transcript go through the same normaliser before they are compared, so the
score counts different words, not different ways of writing the same words:
- English: Whisper's English text normaliser (transformers' copy; its British -> American spelling table
  ships in the `whisper-normalizer` package): numbers and ordinals to digits ("twenty-five" -> "25"),
  currency ("twenty dollars" -> "$20"), titles ("Mr." -> "mister"), contractions ("I'll" -> "i will"),
  spellings ("colour" -> "color"), fillers ("uh", "hmm") dropped. A few spellings it leaves apart are joined
  first: OK/okay, a.m./am, clock times ("3:30" and "three thirty"), o'clock, per cent.
- Chinese: traditional -> simplified (OpenCC), full-width forms to ASCII (NFKC), Arabic numerals to Chinese
  ones (cn2an: "35岁" -> "三十五岁"), punctuation and spaces removed; scored per character.
- Other languages: lower case, punctuation removed, apostrophes dropped inside words.
Sound events (<laughs>) are stripped first in every language: they are not spoken words.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable
from importlib import resources
from typing import Literal

import jiwer

# Sound events in SABER speech content are written <laughs>, <sigh>, <door slams>: not spoken words.
_SOUND_EVENT = re.compile(r"<[^<>]*>")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

ErrorMetric = Literal["wer", "cer"]
TextLanguage = Literal["en", "zh", "other"]

# Spellings Whisper's normaliser leaves different; applied before it, to both sides alike.
_ENGLISH_PREPASS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bo\.?k\b\.?", re.IGNORECASE), "okay"),
    (re.compile(r"\b([ap])\.\s?m\b\.?", re.IGNORECASE), r"\1m"),
    # Clock times as the number normaliser writes "three thirty" ("330") and "three oh five" ("305"): "3:30", and
    # "3.30", "3-30" or "3 30" after a word that introduces a time ("at 10 30": Whisper writes times every way).
    (re.compile(r"\b(\d{1,2}):(\d\d)\b"), r"\1\2"),
    (re.compile(r"\b(at|by|until|till|from|to|around|about|before|after) (\d{1,2})[. -]([0-5]\d)\b",
                re.IGNORECASE), r"\1 \2\3"),
    (re.compile(r"\bcannot\b", re.IGNORECASE), "can not"),  # what the normaliser makes of "can't"
    (re.compile(r"\bo['\u2019]?clock\b", re.IGNORECASE), "oclock"),
    (re.compile(r"\bper cent\b", re.IGNORECASE), "percent"),
)


def strip_sound_events(text: str) -> str:
    return _SOUND_EVENT.sub(" ", text)


def is_chinese(text: str, lang: str | None = None) -> bool:
    if lang:
        return lang.lower().split("-")[0] in {"zh", "cn", "yue"}
    return bool(_CJK.search(text))


def text_language(text: str, lang: str | None = None) -> TextLanguage:
    """Which normaliser a transcript gets: from the clip's language when given, else from its script
    (no CJK characters: English, the language of every corpus without a language column)."""
    if is_chinese(text, lang):
        return "zh"
    if lang is None or lang.lower().split("-")[0] == "en":
        return "en"
    return "other"


def normalise(text: str, lang: str | None = None) -> str:
    """The normalised form of `text` for scoring; `lang` picks the normaliser (see text_language)."""
    return _NORMALISERS[text_language(text, lang)](text)


def normalise_english(text: str) -> str:
    text = unicodedata.normalize("NFKC", strip_sound_events(text))
    for pattern, replacement in _ENGLISH_PREPASS:
        text = pattern.sub(replacement, text)
    return " ".join(_whisper_english_normaliser()(text).split())


def normalise_chinese(text: str) -> str:
    """Simplified characters, Chinese numerals, no punctuation or spaces; Latin letters lower-cased."""
    import cn2an

    text = unicodedata.normalize("NFKC", strip_sound_events(text))
    text = _opencc_t2s().convert(text)
    text = cn2an.transform(text, "an2cn")  # digits to numerals; dates digit by digit ("2024年" -> "二零二四年")
    text = text.replace("两", "二").replace("〇", "零")  # "两个" and "2个" (-> "二个") read alike
    return "".join(ch.lower() for ch in text if ch.isalnum())


def normalise_other(text: str) -> str:
    """Lower case, punctuation removed, apostrophes dropped inside words ("can't" -> "cant"), spaces folded."""
    text = unicodedata.normalize("NFKC", strip_sound_events(text)).lower()
    text = re.sub(r"['\u2019`]", "", text)
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return " ".join(text.split())


_NORMALISERS: dict[TextLanguage, Callable[[str], str]] = {
    "en": normalise_english, "zh": normalise_chinese, "other": normalise_other,
}


def error_rate(reference: str, hypothesis: str, lang: str | None = None) -> tuple[ErrorMetric, float]:
    """Returns ("wer"|"cer", rate) of the hypothesis against the reference after normalisation.

    The reference (the annotation) decides the normaliser, and both sides go through that same one.
    Chinese has no word boundaries, so it is scored per character. An empty reference is an error for the
    caller to handle: the rate is undefined.
    """
    language = text_language(reference, lang)
    normaliser = _NORMALISERS[language]
    ref, hyp = normaliser(reference), normaliser(hypothesis)
    if not ref:
        raise ValueError("reference transcript is empty after normalisation")
    if language == "zh":
        return "cer", float(jiwer.cer(ref, hyp)) if hyp else 1.0
    return "wer", float(jiwer.wer(ref, hyp)) if hyp else 1.0


# ---- the maintained normalisers, loaded on first use (the import of transformers takes seconds) ------------
@functools.cache
def _whisper_english_normaliser() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    table = resources.files("whisper_normalizer").joinpath("normalizers", "english.json")
    if not table.is_file():
        raise RuntimeError("whisper-normalizer no longer ships normalizers/english.json (the spelling table)")
    return EnglishTextNormalizer(json.loads(table.read_text(encoding="utf-8")))


@functools.cache
def _opencc_t2s():  # noqa: ANN202 - opencc ships no type for its converter
    import opencc

    return opencc.OpenCC("t2s")
