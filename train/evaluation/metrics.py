"""Metrics of the evaluation harness, as the seed papers define them.

- DFEW / RAVDESS: UAR (mean per-class recall) and WAR (overall accuracy); MER2023: weighted F1.
- CA-MER (MoSEAR App. C.1): set-level accuracy and recall over grouped emotion labels.
- EmoReAIM (AVERE App. D.1): accuracy per task; for Yes/No tasks the paper's own precision / recall / F1.
- EmoBench-M (SABER-LLM Table II): accuracy per task, per category and overall.
- SABER-Test (Tables IV, V) and EMER (Table III; AVERE Table 2): means of LLM-judge scores, in judge_metrics.py.

Conventions shared by every function here:
- A prediction of None is an answer the parser could not read. It counts as wrong and is counted
  (`n_unparseable`); it is never dropped, or a model would gain by answering off-format.
- A judge failure is the opposite case: it says nothing about the model, so it is left out of the mean and
  counted per dimension (`n_failed`) instead of being scored 0.
- Rates are fractions in [0, 1]; the published tables print percent (see `reference/`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Literal

# ---------------------------------------------------------------- recognition: DFEW, RAVDESS, MER2023


def _check_pairs(y_true: Sequence[object], y_pred: Sequence[object]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("no items to score")


def per_class_recall(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] | None = None
) -> dict[str, float]:
    """Recall of each class; `labels` defaults to the classes present in y_true (sorted).

    A class in `labels` with no true item has no recall, so it is an error rather than a silent 0.
    """
    _check_pairs(y_true, y_pred)
    support = Counter(y_true)
    classes = sorted(support) if labels is None else list(labels)
    absent = [label for label in classes if support[label] == 0]
    if absent:
        raise ValueError(f"labels {absent} have no items in y_true, so their recall is undefined")
    hits = Counter(t for t, p in zip(y_true, y_pred, strict=True) if t == p)
    return {label: hits[label] / support[label] for label in classes}


def uar(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] | None = None) -> float:
    """Unweighted average recall: every class counts the same, however rare."""
    return fmean(per_class_recall(y_true, y_pred, labels).values())


def war(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """Weighted average recall, which is plain accuracy (each class weighted by its support)."""
    _check_pairs(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def weighted_f1(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """F1 per class weighted by the class's support in y_true (MER2023).

    A class that only appears among predictions (None included) weighs nothing itself, but each such prediction
    is still a miss for the true class's recall: the same as scikit-learn's average='weighted'.
    """
    _check_pairs(y_true, y_pred)
    support = Counter(y_true)
    predicted = Counter(y_pred)
    hits = Counter(t for t, p in zip(y_true, y_pred, strict=True) if t == p)
    total = 0.0
    for label, n_true in support.items():
        precision = hits[label] / predicted[label] if predicted[label] else 0.0
        recall = hits[label] / n_true
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += n_true * f1
    return total / len(y_true)


@dataclass(frozen=True)
class RecognitionScores:
    uar: float
    war: float
    per_class_recall: dict[str, float]
    n_items: int
    n_unparseable: int


def recognition_scores(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] | None = None
) -> RecognitionScores:
    recalls = per_class_recall(y_true, y_pred, labels)
    return RecognitionScores(
        uar=fmean(recalls.values()), war=war(y_true, y_pred), per_class_recall=recalls,
        n_items=len(y_true), n_unparseable=sum(p is None for p in y_pred),
    )


# ---------------------------------------------------------------- CA-MER grouped emotion labels

CA_MER_LABELS: tuple[str, ...] = ("angry", "happy", "surprise", "fear", "sad", "worry", "neutral", "doubt", "contempt")

# Our stand-in for the paper's GPT grouping function G(.): each CA-MER label with words of the same meaning.
# Words of other meanings (e.g. "disgust", "nostalgic") are deliberately absent: they form their own group,
# which is what G does with a label outside every group, so they count against accuracy and never match.
# Words common in other senses ("content" of speech, "composed" of) are left out: free text is searched too.
EMOTION_GROUPS: dict[str, tuple[str, ...]] = {
    "angry": ("anger", "angrily", "mad", "furious", "fury", "rage", "enraged", "irritated", "irritation",
              "annoyed", "annoyance", "frustrated", "frustration", "hostile", "hostility", "outraged"),
    "happy": ("happiness", "joy", "joyful", "glad", "cheerful", "delighted", "pleased", "excited", "excitement",
              "amused", "amusement", "contentment", "elated"),
    "surprise": ("surprised", "astonished", "astonishment", "amazed", "amazement", "shocked", "shock",
                 "startled"),
    "fear": ("fearful", "afraid", "scared", "frightened", "terrified", "terror", "panic", "panicked"),
    "sad": ("sadness", "unhappy", "sorrow", "sorrowful", "grief", "grieving", "depressed", "melancholy",
            "disappointed", "disappointment", "heartbroken"),
    "worry": ("worried", "anxious", "anxiety", "nervous", "nervousness", "concerned", "concern", "uneasy",
              "unease", "apprehensive"),
    "neutral": ("calm", "indifferent", "neutrality"),
    "doubt": ("doubtful", "skeptical", "sceptical", "skepticism", "suspicious", "suspicion", "puzzled",
              "confused", "confusion", "uncertain", "uncertainty", "disbelief"),
    "contempt": ("contemptuous", "disdain", "disdainful", "scorn", "scornful", "sneering", "mocking", "derision"),
}
# Emotions outside the CA-MER labels, with their word forms: each is a group of its own (G's treatment of a label
# outside every group), listed so that free text is searched for them too. MoSEAR Eq. 22 groups every predicted
# label, so "happy but also disgusted" must count two predictions, as the list ["happy", "disgusted"] does; a word
# nobody listed is seen in a list but not in free text. The vocabulary: the emotion classes of the benchmarks scored
# here (DFEW, RAVDESS, MER2023) and of the ten source corpora (engine.dataset.corpora.emotions), less words that are
# mostly not emotions in running text ("interest", "trust", "distraction", "other"); tests check that coverage.
OTHER_EMOTIONS: dict[str, tuple[str, ...]] = {
    "disgust": ("disgusted", "disgusting", "disgustedly", "revulsion", "repulsed"),
    "anticipation": ("anticipating", "expectant"),
    "serenity": ("serene",),
    "boredom": ("bored",),
}
_WORD_TO_GROUP: dict[str, str] = {w: group for groups in (EMOTION_GROUPS, OTHER_EMOTIONS)
                                  for group, words in groups.items() for w in (group, *words)}


def emotion_group(word: str) -> str:
    """The CA-MER label (or OTHER_EMOTIONS group) a word belongs to, or the (normalised) word itself when it is in
    no group."""
    key = " ".join(word.lower().split())
    return _WORD_TO_GROUP.get(key, key)


def emotion_groups_in_text(text: str) -> set[str]:
    """Emotion groups whose words occur in free text: the CA-MER labels and the OTHER_EMOTIONS, so that an emotion
    outside the table counts in |Ŷ| as it does in a list. Lexical only: it does not see negation ("not angry"),
    so feed it the final conclusion of an answer, or pass extracted keywords as a set instead."""
    return {_WORD_TO_GROUP[t] for t in re.findall(r"[a-z]+", text.lower()) if t in _WORD_TO_GROUP}


@dataclass(frozen=True)
class GroupedLabelScores:
    accuracy: float  # mean over items of |Y ∩ Ŷ| / |Ŷ|; an empty Ŷ scores 0 (and is counted below)
    recall: float  # mean over items of |Y ∩ Ŷ| / |Y|
    average: float  # (accuracy + recall) / 2, the paper's ranking metric
    n_items: int
    n_empty_predictions: int


def grouped_label_scores(
    true_labels: Sequence[Collection[str]], predictions: Sequence[str | Collection[str] | None]
) -> GroupedLabelScores:
    """Set-level accuracy and recall after mapping both sides to emotion groups (MoSEAR Eq. 22-24).

    A prediction is free text (searched with `emotion_groups_in_text`), a collection of emotion words, or None.
    When no emotion is found, |Ŷ| = 0 leaves accuracy undefined; we score it 0 rather than drop the item,
    since dropping would reward a model for saying nothing.
    """
    _check_pairs(true_labels, predictions)
    accuracies, recalls, n_empty = [], [], 0
    for gold_words, prediction in zip(true_labels, predictions, strict=True):
        if isinstance(gold_words, str):  # a bare string would be read letter by letter
            raise ValueError(f"true labels must be collections of words, got the string {gold_words!r}")
        gold = {emotion_group(w) for w in gold_words}
        if not gold:
            raise ValueError("an item has no ground-truth label")
        if prediction is None:
            predicted: set[str] = set()
        elif isinstance(prediction, str):
            predicted = emotion_groups_in_text(prediction)
        else:
            predicted = {emotion_group(w) for w in prediction}
        overlap = len(gold & predicted)
        n_empty += not predicted
        accuracies.append(overlap / len(predicted) if predicted else 0.0)
        recalls.append(overlap / len(gold))
    accuracy, recall = fmean(accuracies), fmean(recalls)
    return GroupedLabelScores(accuracy, recall, (accuracy + recall) / 2, len(accuracies), n_empty)


# ---------------------------------------------------------------- answer accuracy: EmoReAIM, EmoBench-M


@dataclass(frozen=True)
class AccuracyScore:
    accuracy: float
    n_items: int
    n_correct: int
    n_unparseable: int


def answer_accuracy(gold: Sequence[str], predicted: Sequence[str | None], casefold: bool = False) -> AccuracyScore:
    """Share of items answered correctly; None (unparseable) is wrong and counted."""
    _check_pairs(gold, predicted)

    def same(g: str, p: str | None) -> bool:
        return p is not None and (g.casefold() == p.casefold() if casefold else g == p)

    n_correct = sum(same(g, p) for g, p in zip(gold, predicted, strict=True))
    return AccuracyScore(n_correct / len(gold), len(gold), n_correct, sum(p is None for p in predicted))


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


@dataclass(frozen=True)
class YesNoScores:
    accuracy: float
    precision: float  # the paper's "precision": accuracy on items whose gold answer is Yes
    recall: float  # the paper's "recall": accuracy on items whose gold answer is No
    f1: float  # harmonic mean of the two
    n_items: int
    n_yes: int
    n_no: int
    n_unparseable: int


def yes_no_scores(gold: Sequence[str], predicted: Sequence[str | None]) -> YesNoScores:
    """EmoReAIM Yes/No metrics (AVERE App. D.1). These are the recalls of the Yes and No classes under other
    names, not the usual precision/recall of Yes; the F1 therefore rewards answering both classes well."""
    _check_pairs(gold, predicted)
    if bad := set(gold) - {"Yes", "No"}:
        raise ValueError(f"gold answers must be 'Yes' or 'No', got {sorted(bad)}")
    if len(set(gold)) < 2:
        raise ValueError(f"precision and recall need gold Yes and gold No items; all {len(gold)} are {gold[0]!r}")
    if bad := {p for p in predicted if p is not None} - {"Yes", "No"}:
        raise ValueError(f"predictions must be 'Yes', 'No' or None (unparseable), got {sorted(bad)}")

    def on_gold(answer: str) -> AccuracyScore:
        answers = [p for g, p in zip(gold, predicted, strict=True) if g == answer]
        return answer_accuracy([answer] * len(answers), answers)

    on_yes, on_no = on_gold("Yes"), on_gold("No")
    overall = answer_accuracy(gold, predicted)
    return YesNoScores(
        accuracy=overall.accuracy, precision=on_yes.accuracy, recall=on_no.accuracy,
        f1=harmonic_mean(on_yes.accuracy, on_no.accuracy), n_items=overall.n_items,
        n_yes=on_yes.n_items, n_no=on_no.n_items, n_unparseable=overall.n_unparseable,
    )


EMOREAIM_TASKS: dict[str, Literal["choice", "yes_no"]] = {
    "basic_audio": "choice", "basic_visual": "choice",  # 4-way multiple choice, letters A-D
    "modality_agreement": "yes_no", "stress_audio": "yes_no", "stress_visual": "yes_no",
}

# gold answers and parsed predictions of one task, index-aligned
TaskAnswers = tuple[Sequence[str], Sequence[str | None]]


@dataclass(frozen=True)
class EmoReAIMScores:
    tasks: dict[str, AccuracyScore | YesNoScores]
    avg_accuracy: float  # unweighted mean of the task accuracies (the paper's "Avg. Acc." when all five are in)
    n_unparseable: int


def emoreaim_scores(answers: Mapping[str, TaskAnswers]) -> EmoReAIMScores:
    if unknown := set(answers) - set(EMOREAIM_TASKS):
        raise ValueError(f"unknown EmoReAIM tasks {sorted(unknown)}; known: {list(EMOREAIM_TASKS)}")
    if not answers:
        raise ValueError("no EmoReAIM tasks to score")
    tasks: dict[str, AccuracyScore | YesNoScores] = {}
    for task, (gold, predicted) in answers.items():
        score = yes_no_scores if EMOREAIM_TASKS[task] == "yes_no" else answer_accuracy
        tasks[task] = score(gold, predicted)
    return EmoReAIMScores(
        tasks, fmean(t.accuracy for t in tasks.values()), sum(t.n_unparseable for t in tasks.values()))


# The twelve tasks of SABER-LLM Table II by category (the paper's text says 13 tasks but names these 12).
# The paper abbreviates both the Socially Complex category and the Stock Comment task "SCEA"; the category is
# a key of this dict and the task an entry of the FER tuple, so the two never meet in one namespace.
EMOBENCH_M_CATEGORIES: dict[str, tuple[str, ...]] = {
    "FER": ("SOER", "SPER", "OSA", "EIA", "SCEA"),  # foundational emotion recognition
    "CEU": ("FGDEA", "PEA", "FCDEA", "CEIA", "MPDER"),  # conversational emotion understanding
    "SCEA": ("HU", "SD"),  # socially complex emotion analysis
}
EMOBENCH_M_TASKS: tuple[str, ...] = tuple(t for tasks in EMOBENCH_M_CATEGORIES.values() for t in tasks)


@dataclass(frozen=True)
class EmoBenchMSummary:
    categories: dict[str, float]  # mean task accuracy of each category whose tasks are all present
    overall: float | None  # mean of the three category means (Table II all_Avg); None unless all are present
    task_mean: float  # mean over the tasks present, every task weighted alike (not what Table II prints)


def emobench_m_summary(task_accuracy: Mapping[str, float]) -> EmoBenchMSummary:
    """Category and overall means from per-task accuracies, in whatever unit they come (fraction or percent).

    Table II's all_Avg is the mean of the category averages: for SABER-LLM (59.59, 52.15, 67.91) it gives
    59.88, whereas the mean over its twelve tasks is 57.88.
    """
    if unknown := set(task_accuracy) - set(EMOBENCH_M_TASKS):
        raise ValueError(f"unknown EmoBench-M tasks {sorted(unknown)}; known: {list(EMOBENCH_M_TASKS)}")
    if not task_accuracy:
        raise ValueError("no EmoBench-M tasks to score")
    categories = {
        name: fmean(task_accuracy[t] for t in tasks)
        for name, tasks in EMOBENCH_M_CATEGORIES.items()
        if all(t in task_accuracy for t in tasks)
    }
    overall = fmean(categories.values()) if len(categories) == len(EMOBENCH_M_CATEGORIES) else None
    return EmoBenchMSummary(categories, overall, fmean(task_accuracy.values()))


@dataclass(frozen=True)
class EmoBenchMScores:
    tasks: dict[str, AccuracyScore]
    summary: EmoBenchMSummary
    n_unparseable: int


def emobench_m_scores(answers: Mapping[str, TaskAnswers]) -> EmoBenchMScores:
    """Labels are compared case-insensitively, as the answer parser accepts them."""
    if unknown := set(answers) - set(EMOBENCH_M_TASKS):
        raise ValueError(f"unknown EmoBench-M tasks {sorted(unknown)}; known: {list(EMOBENCH_M_TASKS)}")
    tasks = {task: answer_accuracy(gold, pred, casefold=True) for task, (gold, pred) in answers.items()}
    summary = emobench_m_summary({task: score.accuracy for task, score in tasks.items()})
    return EmoBenchMScores(tasks, summary, sum(s.n_unparseable for s in tasks.values()))
