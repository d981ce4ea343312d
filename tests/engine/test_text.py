import json
from pathlib import Path

import jiwer
import pytest
import yaml

from engine.core.text import error_rate, normalise, strip_sound_events, text_language

REPO = Path(__file__).resolve().parents[2]
TRANSCRIPTS = REPO / "tests" / "data" / "asr_transcripts.jsonl"


def production_max(metric: str) -> float:
    return float(yaml.safe_load((REPO / "jobs" / "configs" / "production.yaml").read_text())["asr"][f"max_{metric}"])


def test_sound_events_are_stripped_before_scoring():
    assert strip_sound_events("<sighs> I give up <laughs>").split() == ["I", "give", "up"]
    assert error_rate("<sighs heavily> I can't believe it!", "I can't believe it") == ("wer", 0.0)
    assert normalise("<music>") == ""
    assert normalise("<笑声>我们走吧", "zh") == "我们走吧"


@pytest.mark.parametrize(("annotation", "transcript"), [
    # The measurements with the old normaliser: WER 0.8, 0.5 and 0.5.
    ("OK, I will colour it", "Okay, I'll color it."),
    ("It costs twenty dollars", "It costs $20."),
    ("Mr. Smith is 25 years old", "Mister Smith is twenty-five years old."),
])
def test_the_same_words_written_differently_score_zero(annotation, transcript):
    assert error_rate(annotation, transcript) == ("wer", 0.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("Well-known, isn't it?  YES.", "well known is not it yes"),
    ("He's got twenty-five dollars", "he has got $25"),  # contraction, number words, currency
    ("I'm gonna pay £3 at 3:30 p.m.", "i am going to pay £3 at 330 pm"),
    ("Meet me at three thirty PM", "meet me at 330 pm"),  # the number normaliser's own time form
    ("We left at 10.30, not at 10 30", "we left at 1030 not at 1030"),
    ("Dr. Brown and Mrs. Jones", "doctor brown and missus jones"),
    ("My favourite colour is grey", "my favorite color is gray"),
    ("O.K., fifty per cent", "okay 50%"),
    ("I cannot, uh, hmm, remember the first time", "i can not remember the 1st time"),  # fillers dropped
])
def test_english_normal_form(text, expected):
    assert normalise(text) == expected


def test_wer_matches_hand_count():
    # reference 6 words; one substitution (needs->leaves) and one deletion (pepper): 2/6
    metric, rate = error_rate("The soup needs salt and pepper.", "the soup leaves salt and")
    assert metric == "wer"
    assert rate == pytest.approx(2 / 6)
    assert rate == pytest.approx(jiwer.wer("the soup needs salt and pepper", "the soup leaves salt and"))
    # "$20" is one word after normalisation: "it costs $20" vs "it cost $20" is one substitution in 3
    assert error_rate("It costs twenty dollars", "it cost 20 dollars")[1] == pytest.approx(1 / 3)


def test_empty_transcript_is_all_deletions():
    assert error_rate("hello there", "") == ("wer", 1.0)
    assert error_rate("我们走吧", "") == ("cer", 1.0)


def test_chinese_uses_cer_without_spaces():
    # 6 characters, one substituted: 1/6
    metric, rate = error_rate("我今天很开心", "我今天很高 心")
    assert metric == "cer"
    assert rate == pytest.approx(1 / 6)


def test_chinese_normal_form():
    assert normalise("我們今天很開心！", "zh") == "我们今天很开心"  # traditional -> simplified, punctuation gone
    assert normalise("我今年３５歲，你呢？", "zh") == "我今年三十五岁你呢"  # full-width digits and commas
    assert normalise("他有2個孩子", "zh") == normalise("他有两个孩子", "zh") == "他有二个孩子"
    assert normalise("二〇二四年", "zh") == normalise("2024年", "zh") == "二零二四年"
    assert normalise("我用iPhone拍的", "zh") == "我用iphone拍的"


def test_language_picks_the_normaliser():
    assert text_language("hello world") == "en"
    assert text_language("你好") == "zh"
    assert text_language("hello", "zh-CN") == "zh"
    assert text_language("bonjour", "fr") == "other"
    assert error_rate("hello world", "hello world", lang="zh")[0] == "cer"
    # French keeps its words as written: no English number or spelling rules
    assert normalise("J'ai vingt-cinq ans", "fr") == "jai vingt cinq ans"


def test_empty_reference_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        error_rate("<laughs>", "ha ha")


# ---- Chinese pairs, hand-written: (annotation, transcript, passes at 0.3?, CER worked out by hand) -------------
ZH_PAIRS = [
    ("我們今天很開心", "我们今天很开心", True, 0.0),
    ("這是我的電腦", "这是我的电脑", True, 0.0),
    ("他說話很快，我聽不懂。", "他说话很快我听不懂", True, 0.0),
    ("我今年35歲", "我今年三十五岁", True, 0.0),
    ("價格是12.5元", "价格是十二点五元", True, 0.0),
    ("我們在2024年見面", "我们在二零二四年见面", True, 0.0),
    ("他有兩個孩子", "他有2个孩子", True, 0.0),
    ("百分之五十的學生通過了考試", "50%的学生通过了考试", True, 0.0),
    ("你好嗎？我很好！", "你好吗 我很好", True, 0.0),
    ("「真的嗎？」她問。", "真的吗她问", True, 0.0),
    ("第1名是我的朋友", "第一名是我的朋友", True, 0.0),
    ("我們明天早上八點出發", "我们明天早上8点出发", True, 0.0),
    ("請給我三杯咖啡", "请给我3杯咖啡", True, 0.0),
    ("我非常喜歡這部電影", "我非常喜欢这部电影", True, 0.0),
    ("<笑聲> 太好了", "太好了", True, 0.0),
    ("我今天很开心", "我今天很高兴", False, 2 / 6),  # 开心 -> 高兴, a synonym: two substitutions in six
    ("我们去公园散步吧", "我们去公园跑步吧", True, 1 / 8),  # one substitution in eight
    ("他昨天买了一本书", "他昨天买了一本", True, 1 / 8),  # one deletion in eight
    ("我們今天很開心", "外面下着大雨", False, 1.0),  # no character in common: 6 substitutions + 1 deletion
    ("這是我的電腦", "请关上窗户", False, 1.0),  # none in common: 5 substitutions + 1 deletion
    ("我非常喜歡這部電影", "明天我们去北京", False, 1.0),  # 7 substitutions + 2 deletions; aligning 我 costs 10
    ("價格是12.5元", "他的狗很可爱", False, 1.0),
    ("你好嗎？我很好！", "火车晚点了", False, 1.0),
    ("我們明天早上八點出發", "我们昨天晚上看了电影", False, 6 / 10),  # 明早八点出发 -> 昨晚看了电影
    ("請給我三杯咖啡", "请给我一杯茶", False, 3 / 7),  # 三->一, 咖->茶, 啡 deleted
]


def test_chinese_pairs_scored_as_cer():
    limit = production_max("cer")
    for annotation, transcript, passes, by_hand in ZH_PAIRS:
        metric, rate = error_rate(annotation, transcript, "zh")
        assert metric == "cer"
        assert rate == pytest.approx(by_hand), (annotation, transcript)
        assert (rate <= limit) == passes, (annotation, transcript, rate)
    assert len(ZH_PAIRS) >= 20


# ---- real Whisper tiny.en transcripts of espeak-ng speech (tests/data/make_asr_transcripts.py) ------------------
def _pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(same words, other written form), (ASR misheard words, but a right annotation), (a different sentence)."""
    items = [json.loads(line) for line in TRANSCRIPTS.read_text(encoding="utf-8").splitlines()]
    same = [(i["annotation"], i["whisper"]) for i in items if i["heard"]]
    misheard = [(i["annotation"], i["whisper"]) for i in items if not i["heard"]]
    # each transcript against the next item's annotation: a different utterance, often of the same kind
    different = [(items[(k + 1) % len(items)]["annotation"], item["whisper"]) for k, item in enumerate(items)]
    return same, misheard, different


def test_written_forms_pass_and_wrong_transcripts_fail_at_the_production_threshold():
    limit = production_max("wer")
    same, misheard, different = _pairs()
    assert len(same) >= 60 and len(different) >= 40
    false_rejections = [(a, t, r) for a, t in same if (r := error_rate(a, t)[1]) > limit]
    caught = sum(error_rate(a, t)[1] > limit for a, t in different)
    assert len(false_rejections) / len(same) <= 0.02, false_rejections
    assert caught / len(different) >= 0.95, caught
    # Every one of these is the same words: the normaliser makes them identical, not merely close.
    assert all(error_rate(a, t)[1] == 0.0 for a, t in same)
    # The misheard items are the ASR's errors (about a third of this set); most stay under the threshold.
    assert sum(error_rate(a, t)[1] <= limit for a, t in misheard) >= len(misheard) // 2
