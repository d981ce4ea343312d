import pytest

from engine.core.sed import (
    SedFormatError,
    SedSections,
    build_sed_target,
    parse_sed_response,
    render_sections,
    user_prompt,
)

FIELDS = {
    "video_desc": "A man stands in a dim kitchen.",
    "facial_exp_desc": "His brows are lowered and his jaw is tight.",
    "body_lang_desc": "Arms crossed, leaning back.",
    "speech_content": "<sighs> I told you this would happen.",
    "acoustic_feat": "Low pitch, slow and clipped.",
    "sentiment_analysis": "Face and voice agree: controlled anger.",
}


def test_target_is_visual_then_acoustic_then_reasoning():
    target = build_sed_target(FIELDS)
    assert target == (
        "## Visual evidence\n"
        "Scene: A man stands in a dim kitchen.\n"
        "Face: His brows are lowered and his jaw is tight.\n"
        "Body: Arms crossed, leaning back.\n\n"
        "## Acoustic evidence\n"
        'Speech: "I told you this would happen." (non-speech sounds: sighs)\n'
        "Delivery: Low pitch, slow and clipped.\n\n"
        "## Reasoning\n"
        "Face and voice agree: controlled anger."
    )


def test_parse_round_trips_and_is_strict():
    sections = parse_sed_response(build_sed_target(FIELDS))
    assert sections.reasoning == "Face and voice agree: controlled anger."
    assert render_sections(sections) == build_sed_target(FIELDS)
    with pytest.raises(SedFormatError, match="in order"):
        parse_sed_response(render_sections(SedSections("a", "b", "c")).replace("## Visual evidence", "## Reasoning", 1))
    with pytest.raises(SedFormatError, match="found \\[\\]"):
        parse_sed_response("The person looks angry.")
    with pytest.raises(SedFormatError, match="empty"):
        parse_sed_response("## Visual evidence\n\n## Acoustic evidence\nx\n## Reasoning\ny")


def test_no_speech_and_language_prompts():
    assert 'Speech: none' in build_sed_target({**FIELDS, "speech_content": "<music>"})
    assert user_prompt("zh-CN").startswith("请") and user_prompt(None).startswith("Analyse")
