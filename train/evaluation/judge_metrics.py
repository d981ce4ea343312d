"""Judge-score metrics of the evaluation harness: SABER-Test (SABER-LLM Tables IV, V; six dimensions 0-3 per
subset) and EMER (Table III; AVERE Table 2): means of LLM-judge scores. The conventions are metrics.py's: a
judge failure says nothing about the model, so it is left out of the mean and counted per dimension
(`n_failed`) instead of being scored 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean

SABER_TEST_DIMENSIONS: tuple[str, ...] = (
    "video_description", "speech_content_description", "acoustic_features_description",
    "facial_expression", "body_language", "comprehensive_reasoning",
)
SABER_TEST_ABBREVIATIONS: dict[str, str] = {  # as the paper's tables print them
    "video_description": "VD", "speech_content_description": "SCD", "acoustic_features_description": "AFD",
    "facial_expression": "FE", "body_language": "BL", "comprehensive_reasoning": "CE",
}
SABER_TEST_SUBSETS: tuple[str, ...] = ("consistent", "inconsistent")
SABER_TEST_SCORE_RANGE: tuple[int, int] = (0, 3)

# Clue and label overlap come from SABER-LLM Table III; AVERE adds spurious association and hallucinated cues.
EMER_CRITERIA: tuple[str, ...] = ("clue_overlap", "label_overlap", "spurious_association", "hallucination")
# SABER-LLM Sec. V-A states a 0-10 scale; a judge prompt asking for 1-10 stays inside it.
EMER_SCORE_RANGE: tuple[int, int] = (0, 10)

# One judged item: score per key, None for a key the judge failed on, or None when the whole judgment failed.
Verdict = Mapping[str, int | None] | None


@dataclass(frozen=True)
class DimensionScore:
    mean: float | None  # over the items the judge scored; None when it scored none
    n_scored: int
    n_failed: int


@dataclass(frozen=True)
class JudgeScores:
    dimensions: dict[str, DimensionScore]
    overall: float | None  # mean of the dimension means; None if any dimension has no score at all
    n_items: int


def judge_scores(verdicts: Sequence[Verdict], keys: Sequence[str], score_range: tuple[int, int]) -> JudgeScores:
    if not verdicts:
        raise ValueError("no verdicts to aggregate")
    low, high = score_range
    scores: dict[str, list[int]] = {key: [] for key in keys}
    failed = Counter[str]()
    for verdict in verdicts:
        if verdict is None:
            failed.update(keys)
            continue
        if set(verdict) != set(keys):
            raise ValueError(f"verdict keys {sorted(verdict)} differ from {sorted(keys)}; mark failures with None")
        for key in keys:
            value = verdict[key]
            if value is None:
                failed[key] += 1
            elif isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                # the parser guarantees this; a bad value here is a caller bug, not a judge failure
                raise ValueError(f"{key} score must be an integer {low}-{high}, got {value!r}")
            else:
                scores[key].append(value)
    dimensions = {
        key: DimensionScore(fmean(values) if values else None, len(values), failed[key])
        for key, values in scores.items()
    }
    means = [d.mean for d in dimensions.values()]
    overall = None if any(m is None for m in means) else fmean(m for m in means if m is not None)
    return JudgeScores(dimensions, overall, len(verdicts))


def saber_test_scores(verdicts: Mapping[str, Sequence[Verdict]]) -> dict[str, JudgeScores]:
    """Six-dimension judge scores (0-3) per SABER-Test subset; the subsets are never pooled (Tables IV, V)."""
    if unknown := set(verdicts) - set(SABER_TEST_SUBSETS):
        raise ValueError(f"unknown SABER-Test subsets {sorted(unknown)}; known: {list(SABER_TEST_SUBSETS)}")
    return {
        subset: judge_scores(items, SABER_TEST_DIMENSIONS, SABER_TEST_SCORE_RANGE)
        for subset, items in verdicts.items()
    }


def emer_scores(
    verdicts: Sequence[Verdict],
    criteria: Sequence[str] = EMER_CRITERIA,
    score_range: tuple[int, int] = EMER_SCORE_RANGE,
) -> JudgeScores:
    """EMER judge criteria; pass criteria=EMER_CRITERIA[:2] for SABER-LLM's clue/label-only protocol."""
    return judge_scores(verdicts, criteria, score_range)
