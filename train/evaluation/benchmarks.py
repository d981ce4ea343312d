"""The benchmarks the harness runs: manifest format, task prompt, answer parser, judge and metrics of each.

A manifest is a .jsonl file, a .parquet file or a folder of Parquet parts (the engine's `saber_test/`), local or
s3://. Every record names its clip in `source_uri` (or `uri`; relative paths are relative to the manifest) and
may give `item_id` (else `clip_id`, else a hash of the clip and the question), `lang`; the other fields are
per benchmark (see each class's `required`); manifests.py reads them (`load_items`) and raises one
`ManifestError` listing all the bad ones.

Records become rows of ITEM_SCHEMA, one table layout for every benchmark: `group` is the subset or task a
metric is broken down by, `choices` the labels or options offered, `gold` a single gold answer, `gold_labels`
a set of gold emotion words, `reference` a reference explanation, and the six annotation fields the SABER-Test
reference. Metrics come from `metrics.py` and are flat `{key: value}` dicts, rates as fractions; keys match
the columns of the reference tables through each benchmark's `ReferenceSpec`s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from engine.core.schema import ANNOTATION_FIELDS
from engine.core.sed import SedFormatError, parse_sed_response
from train.evaluation import judge_metrics as js
from train.evaluation import metrics as m
from train.evaluation import prompts
from train.evaluation.parsers import AnswerError, parse_choice, parse_emobench_m_answer, parse_yes_no

ITEM_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("lang", pa.string()),
    pa.field("group", pa.string()),
    pa.field("subtask", pa.string()),
    pa.field("question", pa.string()),
    pa.field("choices", pa.list_(pa.string())),
    pa.field("gold", pa.string()),
    pa.field("gold_labels", pa.list_(pa.string())),
    pa.field("reference", pa.string()),
    pa.field("system", pa.string()),  # a manifest's own system prompt / instruction (saber_test/ rows)
    pa.field("prompt", pa.string()),
    *[pa.field(name, pa.string()) for name in ANNOTATION_FIELDS],
])
Item = dict[str, Any]
Metrics = dict[str, float | None]


class ItemProblem(ValueError):
    """One record's problem (collected into a ManifestError)."""


@dataclass(frozen=True)
class ReferenceSpec:
    """A published table to chart beside: our metric `ours + k` is its column `theirs + k`."""

    name: str  # reference/<name>.json
    ours: str = ""
    theirs: str = ""

    def column(self, key: str) -> str | None:
        return self.theirs + key[len(self.ours):] if key.startswith(self.ours) else None


@dataclass(frozen=True)
class Scores:
    metrics: Metrics  # flat, e.g. {"consistent/body_language": 2.5}; None where nothing could be scored
    details: dict[str, Any]  # counts behind them (unparseable, judge failures per dimension, ...)


def text_field(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ItemProblem(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _words(record: dict[str, Any], key: str) -> list[str]:
    value = record.get(key)
    if isinstance(value, str) or not isinstance(value, Sequence) or not value \
            or not all(isinstance(v, str) and v.strip() for v in value):
        raise ItemProblem(f"{key!r} must be a non-empty list of strings, got {value!r}")
    return list(value)


def _one_of(value: str, allowed: Sequence[str], key: str) -> str:
    canonical = {a.casefold(): a for a in allowed}
    if value.strip().casefold() not in canonical:
        raise ItemProblem(f"{key} {value!r} is not one of {list(allowed)}")
    return canonical[value.strip().casefold()]


class Benchmark:
    """One benchmark. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    required: ClassVar[tuple[str, ...]]  # manifest fields besides source_uri
    judge: ClassVar[str | None] = None  # judging.JUDGE_STAGES key, when a judge scores the answers
    references: ClassVar[tuple[ReferenceSpec, ...]]
    headline: ClassVar[tuple[str, ...]]  # metric keys charted beside the first reference table

    def fields(self, record: dict[str, Any]) -> Item:
        """The item columns beyond the common ones; raises ItemProblem."""
        raise NotImplementedError

    def check_set(self, items: list[Item]) -> list[str]:
        """Problems of the item set as a whole."""
        return []

    def task(self, item: Item) -> prompts.TaskPrompt:
        raise NotImplementedError

    def parse(self, item: Item, answer: str) -> str | None:
        """The prediction read from an answer (None: nothing to parse); raises AnswerError when unreadable."""
        return None

    def aggregate(self, rows: list[Item]) -> Scores:
        """Metrics over answered items (`prediction` None = unparseable, `verdict` None = judge failure)."""
        raise NotImplementedError


class SaberTest(Benchmark):
    name = "saber_test"
    required = ("av_relation", *ANNOTATION_FIELDS)
    judge = "saber_test"
    references = (ReferenceSpec("saber_test"), ReferenceSpec("saber_test_ablation"))
    headline = tuple(f"{s}/{d}" for s in js.SABER_TEST_SUBSETS for d in js.SABER_TEST_DIMENSIONS)

    def fields(self, record: dict[str, Any]) -> Item:
        relation = _one_of(text_field(record, "av_relation"), js.SABER_TEST_SUBSETS, "av_relation")
        return {"group": relation, **{k: text_field(record, k) for k in ANNOTATION_FIELDS},
                "system": record.get("system") or None, "prompt": record.get("prompt") or None}

    def task(self, item: Item) -> prompts.TaskPrompt:
        return prompts.sed_task(item.get("lang"), item.get("system"), item.get("prompt"))

    def aggregate(self, rows: list[Item]) -> Scores:
        by_subset: dict[str, list[js.Verdict]] = defaultdict(list)
        for row in rows:
            by_subset[row["group"]].append(row["verdict"])
        metrics: Metrics = {}
        details: dict[str, Any] = {}
        for subset, scores in js.saber_test_scores(by_subset).items():
            metrics |= _judge_metrics(scores, f"{subset}/")
            details[subset] = _judge_details(scores)
        return Scores(metrics, details)


def _judge_metrics(scores: js.JudgeScores, prefix: str = "") -> Metrics:
    return {**{f"{prefix}{k}": d.mean for k, d in scores.dimensions.items()}, f"{prefix}overall": scores.overall}


def _judge_details(scores: js.JudgeScores) -> dict[str, Any]:
    return {"n_items": scores.n_items,
            "n_failed": {k: d.n_failed for k, d in scores.dimensions.items() if d.n_failed}}


class Emer(Benchmark):
    """Judge criteria (clue/label overlap, AVERE's spurious association and hallucination); with `labels`, also
    MoSEAR's grouped-label accuracy/recall on the emotions named in the answer's Reasoning section."""

    name = "emer"
    required = ("reference",)
    judge = "emer"
    references = (ReferenceSpec("emer"), ReferenceSpec("emer_avere"),
                  ReferenceSpec("emer_grouped_labels", ours="grouped_labels/"))
    headline = js.EMER_CRITERIA

    def fields(self, record: dict[str, Any]) -> Item:
        labels = _words(record, "labels") if record.get("labels") is not None else None
        return {"reference": text_field(record, "reference"), "gold_labels": labels}

    def task(self, item: Item) -> prompts.TaskPrompt:
        return prompts.sed_task(item.get("lang"))

    def parse(self, item: Item, answer: str) -> str | None:
        if not item.get("gold_labels"):
            return None
        try:
            reasoning = parse_sed_response(answer).reasoning
        except SedFormatError as err:
            raise AnswerError(f"no SED Reasoning section to read the emotion from: {err}") from None
        return ",".join(sorted(m.emotion_groups_in_text(reasoning))) or None

    def aggregate(self, rows: list[Item]) -> Scores:
        scores = js.emer_scores([row["verdict"] for row in rows])
        metrics, details = _judge_metrics(scores), {"judge": _judge_details(scores)}
        labelled = [row for row in rows if row.get("gold_labels")]
        if labelled:
            grouped = m.grouped_label_scores([row["gold_labels"] for row in labelled],
                                             [_groups(row["prediction"]) for row in labelled])
            metrics |= _grouped_metrics(grouped, "grouped_labels/")
            details["grouped_labels"] = {"n_items": grouped.n_items, "n_empty": grouped.n_empty_predictions}
        return Scores(metrics, details)


def _groups(prediction: str | None) -> list[str] | None:
    return prediction.split(",") if prediction else None


def _grouped_metrics(scores: m.GroupedLabelScores, prefix: str) -> Metrics:
    return {f"{prefix}accuracy": scores.accuracy, f"{prefix}recall": scores.recall,
            f"{prefix}average": scores.average}


class EmoBenchM(Benchmark):
    name = "emobench_m"
    required = ("task", "question", "labels", "answer")
    references = (ReferenceSpec("emobench_m"),)
    headline = (*(f"category/{c}" for c in m.EMOBENCH_M_CATEGORIES), "overall")

    def fields(self, record: dict[str, Any]) -> Item:
        labels = _words(record, "labels")
        return {"group": _one_of(text_field(record, "task"), m.EMOBENCH_M_TASKS, "task"),
                "question": text_field(record, "question"), "choices": labels,
                "gold": _one_of(text_field(record, "answer"), labels, "answer")}

    def task(self, item: Item) -> prompts.TaskPrompt:
        return prompts.emobench_m_task(item["question"], item["choices"])

    def parse(self, item: Item, answer: str) -> str | None:
        return parse_emobench_m_answer(answer, item["choices"])

    def aggregate(self, rows: list[Item]) -> Scores:
        scores = m.emobench_m_scores(_by_group(rows))
        metrics: Metrics = {task: s.accuracy for task, s in scores.tasks.items()}
        metrics |= {f"category/{c}": v for c, v in scores.summary.categories.items()}
        metrics |= {"overall": scores.summary.overall, "task_mean": scores.summary.task_mean}
        details = {"n_unparseable": scores.n_unparseable,
                   "tasks": {t: {"n_items": s.n_items, "n_correct": s.n_correct} for t, s in scores.tasks.items()}}
        return Scores(metrics, details)


def _by_group(rows: list[Item]) -> dict[str, m.TaskAnswers]:
    grouped: dict[str, tuple[list[str], list[str | None]]] = defaultdict(lambda: ([], []))
    for row in rows:
        grouped[row["group"]][0].append(row["gold"])
        grouped[row["group"]][1].append(row["prediction"])
    return dict(grouped)


class Recognition(Benchmark):
    """Closed-set emotion recognition (DFEW, RAVDESS, MER2023): one label from a fixed set, answered as
    {'emotion': 'label'} and read by the EmoBench-M parser (strict, label checked against the set)."""

    required = ("label",)

    def __init__(self, name: str, classes: tuple[str, ...], references: tuple[ReferenceSpec, ...],
                 headline: tuple[str, ...]) -> None:
        self.name, self.classes, self.references, self.headline = name, classes, references, headline

    def fields(self, record: dict[str, Any]) -> Item:
        return {"gold": _one_of(text_field(record, "label"), self.classes, "label"), "choices": list(self.classes)}

    def task(self, item: Item) -> prompts.TaskPrompt:
        return prompts.label_task(self.classes)

    def parse(self, item: Item, answer: str) -> str | None:
        return parse_emobench_m_answer(answer, self.classes)

    def aggregate(self, rows: list[Item]) -> Scores:
        gold, predicted = [r["gold"] for r in rows], [r["prediction"] for r in rows]
        scores = m.recognition_scores(gold, predicted)  # UAR over the classes present in the manifest
        metrics: Metrics = {"UAR": scores.uar, "WAR": scores.war, "weighted_f1": m.weighted_f1(gold, predicted)}
        metrics |= {f"recall/{label}": value for label, value in scores.per_class_recall.items()}
        return Scores(metrics, {"n_items": scores.n_items, "n_unparseable": scores.n_unparseable,
                                "classes_scored": sorted(scores.per_class_recall)})


CA_MER_SUBSETS = ("video_aligned", "audio_aligned", "consistent")


class CaMer(Benchmark):
    """Grouped-label accuracy and recall per conflict subset (MoSEAR App. C.1) and over all items."""

    name = "ca_mer"
    required = ("labels", "subset")
    references = (ReferenceSpec("ca_mer"),)
    headline = tuple(f"{s}/average" for s in (*CA_MER_SUBSETS, "overall"))

    def fields(self, record: dict[str, Any]) -> Item:
        return {"gold_labels": _words(record, "labels"), "group": _one_of(text_field(record, "subset"), CA_MER_SUBSETS,
                                                                            "subset")}

    def task(self, item: Item) -> prompts.TaskPrompt:
        return prompts.ca_mer_task()

    def parse(self, item: Item, answer: str) -> str | None:
        groups = m.emotion_groups_in_text(answer)
        if not groups:
            raise AnswerError("no emotion word in the answer")
        return ",".join(sorted(groups))

    def aggregate(self, rows: list[Item]) -> Scores:
        metrics: Metrics = {}
        details: dict[str, Any] = {}
        subsets = {s: [r for r in rows if r["group"] == s] for s in CA_MER_SUBSETS}
        for name, part in [*subsets.items(), ("overall", rows)]:
            if part:
                scores = m.grouped_label_scores([r["gold_labels"] for r in part], [_groups(r["prediction"])
                                                                                    for r in part])
                metrics |= _grouped_metrics(scores, f"{name}/")
                details[name] = {"n_items": scores.n_items, "n_empty": scores.n_empty_predictions}
        return Scores(metrics, details)


class EmoReAIM(Benchmark):
    """MCQA: `answer` is the option letter (basic reasoning) or Yes/No; optional `subtask` (spurious or
    hallucination) of a stress item gives the accuracy on its gold-No items (AVERE Table 14)."""

    name = "emoreaim"
    required = ("task", "question", "answer")
    references = (ReferenceSpec("emoreaim"), ReferenceSpec("emoreaim_stress_subtasks"))
    headline = ("basic_audio/accuracy", "basic_visual/accuracy", "modality_agreement/f1", "stress_audio/f1",
                "stress_visual/f1", "avg_accuracy")

    def fields(self, record: dict[str, Any]) -> Item:
        task = _one_of(text_field(record, "task"), tuple(m.EMOREAIM_TASKS), "task")
        yes_no = m.EMOREAIM_TASKS[task] == "yes_no"
        options = _words(record, "options") if record.get("options") is not None or not yes_no else []
        if yes_no:
            gold = _one_of(text_field(record, "answer"), ("Yes", "No"), "answer")
            if options and sorted(options) != ["No", "Yes"]:
                raise ItemProblem(f"a yes/no item's options must be Yes and No, got {options}")
        else:
            gold = _one_of(text_field(record, "answer"), [chr(ord("A") + i) for i in range(len(options))], "answer")
        subtask = record.get("subtask")
        if subtask is not None and subtask not in ("spurious", "hallucination"):
            raise ItemProblem(f"subtask {subtask!r} is not 'spurious' or 'hallucination'")
        return {"group": task, "question": text_field(record, "question"), "choices": options, "gold": gold,
                "subtask": subtask}

    def check_set(self, items: list[Item]) -> list[str]:
        gold: dict[str, set[str]] = defaultdict(set)
        for item in items:
            if m.EMOREAIM_TASKS[item["group"]] == "yes_no":
                gold[item["group"]].add(item["gold"])
        return [f"task {t}: every gold answer is {sorted(g)[0]}; its precision/recall need Yes and No items"
                for t, g in sorted(gold.items()) if len(g) < 2]

    def task(self, item: Item) -> prompts.TaskPrompt:
        return prompts.emoreaim_task(item["question"], item["choices"] or [],
                                     m.EMOREAIM_TASKS[item["group"]] == "yes_no")

    def parse(self, item: Item, answer: str) -> str | None:
        options = item["choices"] or []
        if m.EMOREAIM_TASKS[item["group"]] == "yes_no":
            letters = {chr(ord("A") + i): o for i, o in enumerate(options)} if options else None
            return parse_yes_no(answer, letters)
        return parse_choice(answer, "".join(chr(ord("A") + i) for i in range(len(options))))

    def aggregate(self, rows: list[Item]) -> Scores:
        scores = m.emoreaim_scores(_by_group(rows))
        metrics: Metrics = {"avg_accuracy": scores.avg_accuracy}
        for task, s in scores.tasks.items():
            metrics[f"{task}/accuracy"] = s.accuracy
            if isinstance(s, m.YesNoScores):
                metrics |= {f"{task}/precision": s.precision, f"{task}/recall": s.recall, f"{task}/f1": s.f1}
        for (task, subtask), part in _stress_no_items(rows).items():
            metrics[f"{task}/{subtask}"] = m.answer_accuracy([r["gold"] for r in part],
                                                             [r["prediction"] for r in part]).accuracy
        return Scores(metrics, {"n_unparseable": scores.n_unparseable,
                                "tasks": {t: s.n_items for t, s in scores.tasks.items()}})


def _stress_no_items(rows: list[Item]) -> dict[tuple[str, str], list[Item]]:
    parts: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for row in rows:
        if row.get("subtask") and row["gold"] == "No":
            parts[(row["group"], row["subtask"])].append(row)
    return dict(parts)


DFEW_CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
RAVDESS_CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
MER2023_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    SaberTest(), Emer(), EmoBenchM(), CaMer(), EmoReAIM(),
    Recognition("dfew", DFEW_CLASSES, (ReferenceSpec("dfew_ravdess", theirs="DFEW/"),
                                       ReferenceSpec("dfew_classwise", ours="recall/")), ("UAR", "WAR")),
    Recognition("ravdess", RAVDESS_CLASSES, (ReferenceSpec("dfew_ravdess", theirs="RAVDESS/"),), ("UAR", "WAR")),
    Recognition("mer2023", MER2023_CLASSES, (ReferenceSpec("mer2023"), ReferenceSpec("mer2023_mosear")),
                ("weighted_f1",)),
)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
