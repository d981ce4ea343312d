import json

import pytest

from engine.models.annotation import AnnotationError, parse_annotation, to_official

OFFICIAL = {
    "video_desc": "A woman in a kitchen.",
    "audio_desc": {"speech_content": "<sighs> Not again.", "acoustic_feat": "Low, slow voice."},
    "facial_exp_desc": "Brows drawn together.",
    "body_lang_desc": "Shoulders slumped.",
    "sentiment_analysis": "Resigned frustration.",
}


def test_official_layout_flattens_and_round_trips():
    fields = parse_annotation(json.dumps(OFFICIAL))
    assert fields["speech_content"] == "<sighs> Not again."
    assert fields["acoustic_feat"] == "Low, slow voice."
    assert to_official(fields) == OFFICIAL


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"video_desc": "a"', "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**OFFICIAL, "audio_desc": "loud"}), "audio_desc: expected an object"),
        (json.dumps({k: v for k, v in OFFICIAL.items() if k != "body_lang_desc"}), "body_lang_desc: missing"),
        (json.dumps({**OFFICIAL, "facial_exp_desc": 3}), "facial_exp_desc: expected a string, got int"),
    ],
)
def test_malformed_annotations_say_what_is_wrong(text, message):
    with pytest.raises(AnnotationError, match=message):
        parse_annotation(text)
