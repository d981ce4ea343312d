import jiwer
import pytest

from engine.text import error_rate, normalise, strip_sound_events


def test_sound_events_are_stripped_before_scoring():
    assert strip_sound_events("<sighs> I give up <laughs>").split() == ["I", "give", "up"]
    assert error_rate("<sighs heavily> I can't believe it!", "I can't believe it") == ("wer", 0.0)


def test_normalisation():
    assert normalise("Well-known, isn't it?  YES.") == "well known isnt it yes"
    assert normalise("<music>") == ""


def test_wer_matches_hand_count():
    # reference 6 words; one substitution (needs->leaves) and one deletion (pepper): 2/6
    metric, rate = error_rate("The soup needs salt and pepper.", "the soup leaves salt and")
    assert metric == "wer"
    assert rate == pytest.approx(2 / 6)
    assert rate == pytest.approx(jiwer.wer("the soup needs salt and pepper", "the soup leaves salt and"))


def test_chinese_uses_cer_without_spaces():
    # 6 characters, one substituted: 1/6
    metric, rate = error_rate("我今天很开心", "我今天很高 心")
    assert metric == "cer"
    assert rate == pytest.approx(1 / 6)


def test_language_hint_forces_metric():
    assert error_rate("hello world", "hello world", lang="zh")[0] == "cer"


def test_empty_reference_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        error_rate("<laughs>", "ha ha")
