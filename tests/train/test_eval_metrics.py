"""Evaluation metrics, answer parsers and published reference tables, checked by hand and against scikit-learn."""

import math
import random
import re
from statistics import fmean

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from train.evaluation import available_references, load_reference
from train.evaluation.judge_metrics import (
    EMER_CRITERIA,
    SABER_TEST_DIMENSIONS,
    emer_scores,
    judge_scores,
    saber_test_scores,
)
from train.evaluation.metrics import (
    CA_MER_LABELS,
    EMOBENCH_M_CATEGORIES,
    EMOBENCH_M_TASKS,
    EMOTION_GROUPS,
    answer_accuracy,
    emobench_m_scores,
    emobench_m_summary,
    emoreaim_scores,
    emotion_group,
    emotion_groups_in_text,
    grouped_label_scores,
    harmonic_mean,
    per_class_recall,
    recognition_scores,
    uar,
    war,
    weighted_f1,
    yes_no_scores,
)
from train.evaluation.parsers import (
    AnswerError,
    or_none,
    parse_choice,
    parse_emer_verdict,
    parse_emobench_m_answer,
    parse_judge_scores,
    parse_saber_test_verdict,
    parse_yes_no,
)

NONE = "<unparseable>"  # scikit-learn cannot mix None with strings; any non-class stand-in works


def sk(pred):
    return [NONE if p is None else p for p in pred]


# ---------------------------------------------------------------- UAR, WAR, weighted F1

TRUE = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "a", None]


def test_uar_war_by_hand():
    # recall a = 2/3, b = 1/2, c = 0/1 (its only item is unparseable) -> UAR = (2/3 + 1/2 + 0) / 3 = 7/18
    assert per_class_recall(TRUE, PRED) == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 0.0})
    assert uar(TRUE, PRED) == pytest.approx(7 / 18)
    # 3 of 6 right
    assert war(TRUE, PRED) == pytest.approx(0.5)
    scores = recognition_scores(TRUE, PRED)
    assert (scores.uar, scores.war, scores.n_items, scores.n_unparseable) == (pytest.approx(7 / 18), 0.5, 6, 1)


def test_uar_labels_choose_the_classes_averaged():
    # only a and b: (2/3 + 1/2) / 2 = 7/12
    assert uar(TRUE, PRED, labels=["a", "b"]) == pytest.approx(7 / 12)
    with pytest.raises(ValueError, match="no items"):
        uar(TRUE, PRED, labels=["a", "z"])


def test_weighted_f1_by_hand():
    # a: P = 2/3 (predicted at 0,1,4), R = 2/3, F1 = 2/3, support 3
    # b: P = 1/2 (predicted at 2,3), R = 1/2, F1 = 1/2, support 2
    # c: nothing right, F1 = 0, support 1
    # weighted = (3 * 2/3 + 2 * 1/2 + 1 * 0) / 6 = 3/6
    assert weighted_f1(TRUE, PRED) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(20))
def test_recognition_metrics_match_sklearn(seed):
    rng = random.Random(seed)
    classes = ["hap", "sad", "neu", "ang", "sur", "dis", "fea"][: rng.randint(2, 7)]
    y_true = [rng.choice(classes) for _ in range(rng.randint(1, 60))]
    y_pred = [rng.choice([*classes, "other", None]) for _ in y_true]
    present = sorted(set(y_true))
    assert uar(y_true, y_pred) == pytest.approx(
        recall_score(y_true, sk(y_pred), labels=present, average="macro", zero_division=0))
    assert war(y_true, y_pred) == pytest.approx(accuracy_score(y_true, sk(y_pred)))
    assert weighted_f1(y_true, y_pred) == pytest.approx(
        f1_score(y_true, sk(y_pred), average="weighted", zero_division=0))


def test_recognition_rejects_misaligned_or_empty_input():
    with pytest.raises(ValueError, match="6 items but y_pred has 5"):
        war(TRUE, PRED[:5])
    with pytest.raises(ValueError, match="no items"):
        weighted_f1([], [])


# ---------------------------------------------------------------- CA-MER grouped labels


def test_grouped_label_scores_by_hand():
    gold = [{"happy"}, {"angry"}, {"sad"}, {"worry"}]
    predictions = [
        "She looks joyful, and a bit surprised.",  # {happy, surprise}: acc 1/2, rec 1/1
        {"annoyed", "Frustrated"},  # both in the angry group -> {angry}: acc 1, rec 1
        {"nostalgic"},  # in no group, so a group of its own: acc 0/1, rec 0
        None,  # unparseable, empty: acc 0 (counted, not dropped), rec 0
    ]
    scores = grouped_label_scores(gold, predictions)
    # acc = (1/2 + 1 + 0 + 0) / 4 = 0.375; rec = (1 + 1 + 0 + 0) / 4 = 0.5; avg = 0.4375
    assert (scores.accuracy, scores.recall, scores.average) == pytest.approx((0.375, 0.5, 0.4375))
    assert (scores.n_items, scores.n_empty_predictions) == (4, 1)
    # Dropping the empty item instead would have given acc = 1.5 / 3 = 0.5: make sure that is not what happens.
    assert scores.accuracy != pytest.approx(0.5)


def test_grouped_labels_two_gold_labels():
    # Y = {doubt, angry}, Ŷ = {doubt (skeptical), neutral (calm), fear}: acc 1/3, rec 1/2, avg 5/12
    scores = grouped_label_scores([["doubt", "anger"]], [["skeptical", "calm", "afraid"]])
    assert (scores.accuracy, scores.recall, scores.average) == pytest.approx((1 / 3, 1 / 2, 5 / 12))


def test_emotion_groups():
    assert tuple(EMOTION_GROUPS) == CA_MER_LABELS
    assert emotion_group(" Furious ") == "angry"
    assert emotion_group("Deeply   Moved") == "deeply moved"  # unknown: normalised, its own group
    assert emotion_groups_in_text("Nervous at first, then relieved.") == {"worry"}
    assert emotion_groups_in_text("") == set()
    assert emotion_groups_in_text("The speech content is composed of two requests.") == set()
    assert emotion_groups_in_text("She looks happy but also disgusted.") == {"happy", "disgust"}
    assert emotion_group("Disgusted") == "disgust" and emotion_group("nostalgic") == "nostalgic"


def test_an_emotion_outside_the_table_counts_in_free_text_as_in_a_list():
    # Y = {happy}; Ŷ = {happy, disgust} either way: accuracy 1/2, recall 1, average 3/4 (MoSEAR Eq. 22-24).
    text = grouped_label_scores([["happy"]], ["She looks happy but also disgusted."])
    listed = grouped_label_scores([["happy"]], [["happy", "disgusted"]])
    assert (text.accuracy, text.recall, text.average) == (listed.accuracy, listed.recall, listed.average) == (
        0.5, 1.0, 0.75)


def test_the_emotion_vocabulary_covers_the_benchmarks_and_the_corpora():
    from engine.dataset.corpora.emotions import EMOTION_TABLE
    from train.evaluation.benchmarks import DFEW_CLASSES, MER2023_CLASSES, RAVDESS_CLASSES
    from train.evaluation.metrics import OTHER_EMOTIONS

    not_emotions_in_text = {"interest", "trust", "distraction", "other", "no_agreement"}
    words = {*DFEW_CLASSES, *RAVDESS_CLASSES, *MER2023_CLASSES, *EMOTION_TABLE} - not_emotions_in_text
    unseen = {w for w in words if not emotion_groups_in_text(f"they seem {w} here")}
    assert unseen == set(), unseen
    assert not set(OTHER_EMOTIONS) & set(EMOTION_GROUPS)
    with pytest.raises(ValueError, match="no ground-truth"):
        grouped_label_scores([set()], [{"happy"}])
    with pytest.raises(ValueError, match="collections of words"):
        grouped_label_scores(["happy"], [{"happy"}])


# ---------------------------------------------------------------- EmoReAIM

YN_GOLD = ["Yes"] * 4 + ["No"] * 6
YN_PRED = ["Yes", "Yes", "Yes", "No", "No", "No", "Yes", "Yes", None, "No"]


def test_yes_no_scores_by_hand():
    # gold Yes: 3 of 4 right -> "precision" 0.75; gold No: right at 4, 5, 9 of 6 -> "recall" 0.5
    # F1 = 2 * 0.75 * 0.5 / 1.25 = 0.6; accuracy = 6/10
    s = yes_no_scores(YN_GOLD, YN_PRED)
    assert (s.accuracy, s.precision, s.recall, s.f1) == pytest.approx((0.6, 0.75, 0.5, 0.6))
    assert (s.n_items, s.n_yes, s.n_no, s.n_unparseable) == (10, 4, 6, 1)


def test_yes_no_definitions_are_per_class_recalls_not_sklearn_precision():
    s = yes_no_scores(YN_GOLD, YN_PRED)
    assert s.precision == pytest.approx(recall_score(YN_GOLD, sk(YN_PRED), labels=["Yes"], average="macro"))
    assert s.recall == pytest.approx(recall_score(YN_GOLD, sk(YN_PRED), labels=["No"], average="macro"))
    # The usual precision of Yes is 3 right of 5 Yes answers = 0.6, which the paper does not use.
    usual = precision_score(YN_GOLD, sk(YN_PRED), labels=["Yes"], average="macro")
    assert usual == pytest.approx(0.6) and usual != pytest.approx(s.precision)


def test_yes_no_rejects_bad_input():
    with pytest.raises(ValueError, match="gold Yes and gold No"):
        yes_no_scores(["No", "No"], ["No", "Yes"])
    with pytest.raises(ValueError, match="predictions must be"):
        yes_no_scores(["Yes", "No"], ["yes", "No"])
    with pytest.raises(ValueError, match="gold answers"):
        yes_no_scores(["Y", "No"], ["Yes", "No"])


def test_answer_accuracy_counts_unparseable_as_wrong():
    s = answer_accuracy(["A", "B", "C", "D"], ["A", "C", "C", None])  # right at 0 and 2
    assert (s.accuracy, s.n_items, s.n_correct, s.n_unparseable) == (0.5, 4, 2, 1)


def test_emoreaim_avg_accuracy_is_unweighted_mean_of_tasks():
    scores = emoreaim_scores({
        "basic_audio": (["A", "B"], ["A", None]),  # 1/2
        "basic_visual": (["A", "B", "C", "D"], ["A", "B", "C", "D"]),  # 4/4
        "modality_agreement": (YN_GOLD, YN_PRED),  # 6/10
        "stress_audio": (["Yes", "No"], ["Yes", "No"]),  # 2/2
        "stress_visual": (["Yes", "No"], ["No", "Yes"]),  # 0/2
    })
    # (0.5 + 1 + 0.6 + 1 + 0) / 5 = 0.62; pooling the 20 items would give 13/20 = 0.65
    assert scores.avg_accuracy == pytest.approx(0.62)
    assert scores.n_unparseable == 2
    assert scores.tasks["modality_agreement"].f1 == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unknown EmoReAIM tasks"):
        emoreaim_scores({"basic": (["A"], ["A"])})


# ---------------------------------------------------------------- EmoBench-M


def _task(n_right, n=2):
    return ["happy"] * n, ["Happy"] * n_right + [None] * (n - n_right)


def test_emobench_m_by_hand():
    right = {"SOER": 2, "SPER": 1, "OSA": 1, "EIA": 0, "SCEA": 2, "FGDEA": 1, "PEA": 1, "FCDEA": 1, "CEIA": 1,
             "MPDER": 1, "HU": 2, "SD": 0}
    scores = emobench_m_scores({task: _task(n) for task, n in right.items()})
    # FER = (1 + .5 + .5 + 0 + 1) / 5 = 0.6; CEU = 0.5; SCEA = (1 + 0) / 2 = 0.5
    assert scores.summary.categories == pytest.approx({"FER": 0.6, "CEU": 0.5, "SCEA": 0.5})
    # overall = (0.6 + 0.5 + 0.5) / 3 = 0.5333; the plain task mean would be 6.5 / 12 = 0.5417
    assert scores.summary.overall == pytest.approx(1.6 / 3)
    assert scores.summary.task_mean == pytest.approx(6.5 / 12)
    # every wrong answer here is unparseable: 24 items - 13 right
    assert scores.n_unparseable == 11
    assert scores.tasks["SPER"].accuracy == 0.5  # "Happy" matches gold "happy"


def test_emobench_m_partial_run_has_no_overall():
    scores = emobench_m_scores({"HU": _task(2), "SD": _task(1), "SOER": _task(0)})
    assert scores.summary.categories == {"SCEA": 0.75}
    assert scores.summary.overall is None
    with pytest.raises(ValueError, match="unknown EmoBench-M tasks"):
        emobench_m_scores({"XYZ": _task(1)})


@pytest.mark.parametrize("model", ["Intern-S1-9B", "Qwen2.5-Omni-7B", "SABER-LLM", "Qwen3-Omni-30B",
                                   "Gemini-2.5-Pro"])
def test_emobench_m_overall_reproduces_table_ii(model):
    row = load_reference("emobench_m")["models"][model]
    summary = emobench_m_summary({task: row[task] for task in EMOBENCH_M_TASKS})
    for category in EMOBENCH_M_CATEGORIES:
        assert summary.categories[category] == pytest.approx(row[f"category/{category}"], abs=0.006)
    assert summary.overall == pytest.approx(row["overall"], abs=0.01)


# ---------------------------------------------------------------- SABER-Test and EMER judge scores

VD, SCD, *REST = SABER_TEST_DIMENSIONS


def test_saber_test_failures_are_excluded_and_counted():
    consistent = [
        dict.fromkeys(SABER_TEST_DIMENSIONS, 3),
        {VD: 1, SCD: None, **dict.fromkeys(REST, 2)},  # the judge failed on SCD only
        None,  # the whole judgment failed
    ]
    inconsistent = [dict.fromkeys(SABER_TEST_DIMENSIONS, 0), dict.fromkeys(SABER_TEST_DIMENSIONS, 1)]
    scores = saber_test_scores({"consistent": consistent, "inconsistent": inconsistent})
    c = scores["consistent"].dimensions
    # VD: (3 + 1) / 2 = 2.0, one failure; were failures 0 it would be 4/3
    assert (c[VD].mean, c[VD].n_scored, c[VD].n_failed) == (2.0, 2, 1)
    assert (c[SCD].mean, c[SCD].n_scored, c[SCD].n_failed) == (3.0, 1, 2)
    assert all((c[d].mean, c[d].n_failed) == (2.5, 1) for d in REST)
    # overall = mean of dimension means = (2 + 3 + 4 * 2.5) / 6 = 2.5
    assert scores["consistent"].overall == pytest.approx(2.5)
    assert scores["consistent"].n_items == 3
    assert scores["inconsistent"].overall == pytest.approx(0.5)


def test_judge_scores_reject_bad_values_and_report_empty_dimensions():
    all_failed = judge_scores([{"a": None, "b": 2}], ["a", "b"], (0, 3))
    assert all_failed.dimensions["a"].mean is None and all_failed.overall is None
    with pytest.raises(ValueError, match="integer 0-3"):
        judge_scores([{"a": 4, "b": 2}], ["a", "b"], (0, 3))
    with pytest.raises(ValueError, match="integer 0-3"):
        judge_scores([{"a": True, "b": 2}], ["a", "b"], (0, 3))
    with pytest.raises(ValueError, match="differ from"):
        judge_scores([{"a": 1}], ["a", "b"], (0, 3))
    with pytest.raises(ValueError, match="unknown SABER-Test subsets"):
        saber_test_scores({"all": []})


def test_emer_scores_by_hand():
    verdicts = [
        {"clue_overlap": 8, "label_overlap": 6, "spurious_association": 7, "hallucination": 9},
        {"clue_overlap": 5, "label_overlap": None, "spurious_association": 4, "hallucination": 6},
        None,
    ]
    scores = emer_scores(verdicts)
    # clue (8 + 5) / 2 = 6.5; label 6 (2 failures); spurious 5.5; hallucination 7.5; overall 25.5 / 4
    means = {k: d.mean for k, d in scores.dimensions.items()}
    assert means == {"clue_overlap": 6.5, "label_overlap": 6.0, "spurious_association": 5.5, "hallucination": 7.5}
    assert scores.dimensions["label_overlap"].n_failed == 2
    assert scores.overall == pytest.approx(25.5 / 4)
    clue_label = emer_scores([{"clue_overlap": 0, "label_overlap": 10}], criteria=EMER_CRITERIA[:2])
    assert clue_label.overall == 5.0


# ---------------------------------------------------------------- parsers: EmoBench-M

LABELS = ["happy", "sad", "neutral", "very positive"]


@pytest.mark.parametrize(("text", "label"), [
    ("{'emotion': 'happy'}", "happy"),
    ('{"emotion": "Sad"}', "sad"),
    ("The speaker sounds cheerful. {'emotion': 'happy'}", "happy"),
    ('```json\n{"emotion": "neutral"}\n```', "neutral"),
    ('```json\n{\n  "emotion": "happy"\n}\n```', "happy"),
    ("{ 'emotion' :  'HAPPY' }", "happy"),
    ("{'emotion': 'happy'} ... so: {\"emotion\": \"Happy\"}", "happy"),  # repeated, same label
    ("{'emotion': 'very  positive'}", "very positive"),
])
def test_emobench_m_answer_good(text, label):
    assert parse_emobench_m_answer(text, LABELS) == label


@pytest.mark.parametrize(("text", "reason"), [
    ("{'emotion': 'joyful'}", "not one of"),
    ("{'emotion': 'happy'} or maybe {'emotion': 'sad'}", "several labels"),
    ("happy", "no {'emotion'"),
    ("{'emotion': \"happy'}", "no {'emotion'"),  # quotes do not pair
    ('{"emotion": "happy", "reason": "smiling"}', "no {'emotion'"),
    ("{'emotion': ['happy']}", "no {'emotion'"),
    ("{'emotion': 'happy'} and \"Emotion\": \"sad\"", "outside"),
    ("", "empty"),
    (None, "empty"),
])
def test_emobench_m_answer_bad(text, reason):
    with pytest.raises(AnswerError, match=re.escape(reason)):
        parse_emobench_m_answer(text, LABELS)


# ---------------------------------------------------------------- parsers: choices and Yes/No


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("b", "B"), (" (c) ", "C"),
    ("Answer: C", "C"), ("The answer is (D).", "D"), ("The correct answer is B", "B"),
    ("(A) The man is laughing towards the end.", "A"), ("C. She frowns while speaking.", "C"),
])
def test_choice_good(text, letter):
    assert parse_choice(text) == letter


@pytest.mark.parametrize("text", [
    "A man smiles in the video",  # the article is not option A
    "(B), or maybe (C)", "B or C", "E", "(E)", "I am not sure", "", None,
])
def test_choice_bad(text):
    with pytest.raises(AnswerError):
        parse_choice(text)


AB = {"A": "Yes", "B": "No"}


@pytest.mark.parametrize(("text", "letters", "answer"), [
    ("Yes", None, "Yes"), ("no.", None, "No"), ("NO!", None, "No"),
    ("Yes, the chuckling suggests joy.", None, "Yes"), ("Answer: No", None, "No"),
    ("A", AB, "Yes"), ("(B)", AB, "No"), ("(A) Yes", AB, "Yes"), ("B. No, it does not.", AB, "No"),
])
def test_yes_no_good(text, letters, answer):
    assert parse_yes_no(text, letters) == answer


@pytest.mark.parametrize(("text", "letters"), [
    ("(A) No", AB),  # letter and word disagree
    ("A", None),  # a letter means nothing without the option map
    ("Nothing suggests that.", None), ("Maybe", None), ("Not really", None), ("", None), ("(C)", AB),
])
def test_yes_no_bad(text, letters):
    with pytest.raises(AnswerError):
        parse_yes_no(text, letters)


# ---------------------------------------------------------------- parsers: judge verdicts

SIX = dict.fromkeys(SABER_TEST_DIMENSIONS, 2)


def _json(scores):
    return "{" + ", ".join(f'"{k}": {v}' for k, v in scores.items()) + "}"


def test_saber_test_verdict_good():
    assert parse_saber_test_verdict(_json(SIX)) == SIX
    fenced = "```json\n" + _json({**SIX, VD: 0, SCD: 3}) + "\n```"
    assert parse_saber_test_verdict(fenced) == {**SIX, VD: 0, SCD: 3}
    with_reason = _json(SIX)[:-1] + ', "reason": "vague on prosody"}'
    assert parse_saber_test_verdict(with_reason) == SIX  # the reason is allowed but not returned


@pytest.mark.parametrize(("text", "reason"), [
    (_json({**SIX, VD: 4}), "integer 0-3"),
    (_json({**SIX, VD: -1}), "integer 0-3"),
    (_json({**SIX, VD: 2.0}), "integer 0-3"),
    (_json({**SIX, VD: '"2"'}), "integer 0-3"),
    (_json({**SIX, VD: "true"}), "integer 0-3"),
    (_json({k: v for k, v in SIX.items() if k != SCD}), "missing keys"),
    (_json({**SIX, "overall": 2}), "unexpected keys"),
    ("Scores: " + _json(SIX), "single JSON object"),
    (_json(SIX) + " Hope this helps.", "single JSON object"),
    (_json(SIX) + _json(SIX), "invalid JSON"),
    ("[1, 2, 3]", "single JSON object"),
    (_json(SIX)[:-1] + ', "reason": 5}', "reason must be a string"),
    ("", "single JSON object"),
])
def test_saber_test_verdict_bad(text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_saber_test_verdict(text)


def test_emer_verdicts_and_ranges():
    both = {"clue_overlap": 1, "label_overlap": 10}
    assert parse_judge_scores(_json(both), ["clue_overlap", "label_overlap"], 1, 10) == both
    with pytest.raises(AnswerError, match="integer 1-10"):
        parse_judge_scores(_json({**both, "clue_overlap": 0}), ["clue_overlap", "label_overlap"], 1, 10)
    four = dict.fromkeys(EMER_CRITERIA, 0)  # default EMER range is SABER-LLM's 0-10
    assert parse_emer_verdict(_json(four)) == four
    with pytest.raises(AnswerError, match="integer 0-10"):
        parse_emer_verdict(_json({**four, "hallucination": 11}))


def test_or_none_turns_format_errors_into_none_only():
    assert or_none(parse_choice, "(B)") == "B"
    assert or_none(parse_choice, "B or C") is None
    assert or_none(parse_saber_test_verdict, "not json") is None
    with pytest.raises(TypeError):  # a bug in the caller is not an unparseable answer
        or_none(parse_emobench_m_answer, "{'emotion': 'happy'}", None)


# ---------------------------------------------------------------- reference tables


def test_reference_files_load_and_name_a_table():
    names = available_references()
    assert {"saber_test", "emer", "emobench_m", "dfew_ravdess", "ca_mer", "emoreaim", "mer2023"} <= set(names)
    for name in names:
        ref = load_reference(name)
        assert re.search(r"\bTable ([IVX]+|\d+)\b", ref["source"]), (name, ref["source"])
        assert ref["metric"] and ref["unit"] and ref["models"], name
        for model, values in ref["models"].items():
            assert values and set(values) <= set(ref["columns"]), (name, model)
            assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), (name, model)
            if ref["unit"] == "percent":
                assert all(0 <= v <= 100 for v in values.values()), (name, model)
    with pytest.raises(ValueError, match="available"):
        load_reference("emobench")


def test_reference_scales():
    for name in ("saber_test", "saber_test_ablation"):
        values = [v for row in load_reference(name)["models"].values() for v in row.values()]
        assert all(0 <= v <= 3 for v in values)
    assert load_reference("saber_test")["models"]["SABER-LLM-7B"]["inconsistent/acoustic_features_description"] == 2.65
    assert load_reference("emer")["models"]["SABER-LLM"] == {"clue_overlap": 8.25, "label_overlap": 7.02}
    assert load_reference("emobench_m")["models"]["SABER-LLM"]["overall"] == 59.88


def test_reference_ca_mer_rows_follow_the_metric():
    for model, row in load_reference("ca_mer")["models"].items():
        for subset in ("video_aligned", "audio_aligned", "consistent", "overall"):
            mean = (row[f"{subset}/accuracy"] + row[f"{subset}/recall"]) / 2
            assert mean == pytest.approx(row[f"{subset}/average"], abs=0.006), (model, subset)
        for metric in ("accuracy", "recall"):
            subsets = fmean(row[f"{s}/{metric}"] for s in ("video_aligned", "audio_aligned", "consistent"))
            assert subsets == pytest.approx(row[f"overall/{metric}"], abs=0.006), (model, metric)


def test_reference_emoreaim_rows_follow_the_metric():
    # printed values that disagree with their own row (listed in the file's notes)
    # Inputs are printed to 0.1, so a recomputed mean may be off by 0.05 plus the 0.05 of the printed result.
    known = {("OLA", "modality_agreement"), ("Emot.-LLaMA* + Vista-DPO†", "modality_agreement")}
    accuracies = ["basic_audio", "basic_visual", "modality_agreement", "stress_audio", "stress_visual"]
    for model, row in load_reference("emoreaim")["models"].items():
        for task in ("modality_agreement", "stress_audio", "stress_visual"):
            if f"{task}/f1" in row and (model, task) not in known:
                f1 = harmonic_mean(row[f"{task}/precision"], row[f"{task}/recall"])
                assert f1 == pytest.approx(row[f"{task}/f1"], abs=0.15), (model, task)
        if "avg_accuracy" in row and model != "VideoLLaMA":
            assert fmean(row[f"{t}/accuracy"] for t in accuracies) == pytest.approx(row["avg_accuracy"], abs=0.1)


def test_reference_dfew_uar_is_mean_class_recall():
    classes = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    table = load_reference("dfew_classwise")["models"]
    for model, row in table.items():
        if model != "OneLLM":  # printed UAR disagrees with its printed recalls (see the file's notes)
            assert fmean(row[c] for c in classes) == pytest.approx(row["UAR"], abs=0.01), model
    # Table 15 expands Table 2: the same UAR for the same models
    table_2 = load_reference("dfew_ravdess")["models"]
    assert table["Our base + AVEm-DPO"]["UAR"] == table_2["Our base + AVEm-DPO"]["DFEW/UAR"] == 58.54
