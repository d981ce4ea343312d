"""Constrained decoding (engine.models.constrained + the local backend) on a tiny random causal LM: every verdict schema
yields answers the strict parsers accept, where unconstrained the same model writes noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.models.annotation import flatten_annotation
from engine.models.backends.base import ChatRequest, ResponseSchema, request_key
from engine.models.backends.local import LocalBackendConfig, TransformersChatBackend
from engine.models.constrained import cap_strings
from engine.models.prompts import AV_RELATION_JUDGE, fence
from engine.models.verdicts import (
    ANNOTATION_SCHEMA,
    CONSISTENCY_SCHEMA,
    RELATION_SCHEMA,
    VerdictError,
    parse_consistency,
    parse_json_object,
    parse_relation,
    scores_schema,
)
from engine.stages.relation import RelationJudgeStage
from train.evaluation.judging import EmerJudgeStage, SaberTestJudgeStage
from train.evaluation.parsers import parse_emer_verdict, parse_saber_test_verdict
from train.preferences.judge import PREFERENCE_SCHEMA, parse_judge_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARSERS = {
    "relation": (RELATION_SCHEMA, parse_relation),
    "consistency": (CONSISTENCY_SCHEMA, parse_consistency),
    "preference": (PREFERENCE_SCHEMA, parse_judge_score),
    "annotation": (ANNOTATION_SCHEMA, lambda text: flatten_annotation(parse_json_object(text))),
    "saber_test_judge": (SaberTestJudgeStage.schema, parse_saber_test_verdict),
    "emer_judge": (EmerJudgeStage.schema, parse_emer_verdict),
}


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> TransformersChatBackend:
    folder = tmp_path_factory.mktemp("constrained") / "tiny-lm"
    return TransformersChatBackend(LocalBackendConfig(model=f"tiny-lm:{folder}", kind="causal_lm", device="cpu",
                                                      batch_size=4, max_string_chars=12))


def _request(i: int, schema: ResponseSchema | None, max_tokens: int = 160, temperature: float = 0.0) -> ChatRequest:
    text = AV_RELATION_JUDGE.text.format(annotation=fence(f"Scene: person {i} smiles; tone: hostile"))
    return ChatRequest([{"role": "user", "content": text}], max_tokens=max_tokens, temperature=temperature,
                       response_schema=schema, tag="test")


def test_schemas_are_closed_objects_with_every_key_required() -> None:
    for name, (schema, _) in PARSERS.items():
        body = schema.schema
        assert body["type"] == "object" and body["additionalProperties"] is False, name
        assert set(body["required"]) == set(body["properties"]), name
    relation = RELATION_SCHEMA.schema["properties"]
    assert relation["relation"]["enum"] == ["consistent", "inconsistent"]
    assert (relation["intensity"]["minimum"], relation["intensity"]["maximum"]) == (0, 10)


def test_scores_schema_for_the_evaluation_judges() -> None:
    schema = scores_schema("saber_test_verdict", ("video_description", "body_language"), 0, 3).schema
    assert schema["required"] == ["video_description", "body_language", "reason"]
    assert schema["properties"]["body_language"] | {"title": None} == {"type": "integer", "minimum": 0,
                                                                       "maximum": 3, "title": None}


def test_cap_strings_caps_free_strings_only() -> None:
    capped = cap_strings(RELATION_SCHEMA.schema, 5)
    assert capped["properties"]["reason"]["maxLength"] == 5
    assert "maxLength" not in capped["properties"]["relation"]  # an enum is not a free string
    assert RELATION_SCHEMA.schema["properties"]["reason"]["maxLength"] == 400  # the original is untouched
    nested = cap_strings(ANNOTATION_SCHEMA.schema, 7)
    assert nested["$defs"]["AudioDescAnswer"]["properties"]["speech_content"]["maxLength"] == 7


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_verdict_schema_constrains_the_tiny_model(lm: TransformersChatBackend, temperature: float) -> None:
    for name, (schema, parse) in PARSERS.items():
        # Sampled strings may be multi-byte characters of several tokens each: the annotation's 6 strings of 12
        # characters fit in 256 tokens.
        results = lm.chat([_request(i, schema, max_tokens=256, temperature=temperature) for i in range(4)])
        for result in results:
            assert result.ok, (name, result.error)
            parse(result.text)  # raises on a malformed answer (an answer cut at max_tokens is one)


def test_unconstrained_answers_of_the_same_model_are_noise(lm: TransformersChatBackend) -> None:
    results = lm.chat([_request(i, None) for i in range(4)])
    for result in results:
        with pytest.raises(VerdictError):
            parse_relation(result.text)


def test_a_batch_mixing_schemas_is_chunked_by_schema(lm: TransformersChatBackend) -> None:
    requests = [_request(0, RELATION_SCHEMA), _request(1, None), _request(2, CONSISTENCY_SCHEMA),
                _request(3, RELATION_SCHEMA)]
    results = lm.chat(requests)
    parse_relation(results[0].text)
    parse_consistency(results[2].text)
    parse_relation(results[3].text)


def test_constrained_decoding_can_be_turned_off(tmp_path: Path) -> None:
    config = LocalBackendConfig(model=f"tiny-lm:{tmp_path / 'lm'}", kind="causal_lm", device="cpu",
                                constrained_decoding=False)
    backend = TransformersChatBackend(config)
    [result] = backend.chat([_request(0, RELATION_SCHEMA, max_tokens=20)])
    with pytest.raises(VerdictError):
        parse_relation(result.text)


def test_relation_stage_on_the_tiny_judge_accepts_every_row(lm: TransformersChatBackend) -> None:
    fields = ("video_desc", "speech_content", "acoustic_feat", "facial_exp_desc", "body_lang_desc",
              "sentiment_analysis")
    rows = [{"clip_id": f"c{i}", "status": "kept", "reject_stage": None, "reject_reason": None,
             "reject_detail": None, "provenance": None, **{k: f"{k} {i}" for k in fields}} for i in range(6)]
    RelationJudgeStage(lm, max_tokens=96)(rows)
    assert [row["status"] for row in rows] == ["kept"] * 6
    assert {row["av_relation"] for row in rows} <= {"consistent", "inconsistent"}
    assert all(0 <= row["av_intensity"] <= 10 for row in rows)


def test_saber_test_judge_stage_on_the_tiny_judge_scores_every_answer(lm: TransformersChatBackend) -> None:
    fields = ("video_desc", "speech_content", "acoustic_feat", "facial_exp_desc", "body_lang_desc",
              "sentiment_analysis")
    rows = [{"item_id": f"i{i}", "answer": f"The person looks happy {i}.", "answer_status": "ok", "status": "kept",
             "reject_stage": None, "reject_reason": None, "reject_detail": None, "provenance": None,
             **{k: f"{k} {i}" for k in fields}} for i in range(4)]
    SaberTestJudgeStage(lm, max_tokens=256)(rows)  # six long keys: about 190 characters
    assert [row["status"] for row in rows] == ["kept"] * 4
    for row in rows:
        scores = json.loads(row["judge_scores"])
        assert len(scores) == 6 and all(0 <= v <= 3 for v in scores.values())


def test_request_key_changes_only_with_a_schema() -> None:
    plain = _request(0, None)
    with_schema = _request(0, RELATION_SCHEMA)
    assert request_key("m", plain) != request_key("m", with_schema)
    assert request_key("m", with_schema) == request_key("m", _request(0, RELATION_SCHEMA))
    json.dumps(RELATION_SCHEMA.schema)  # what goes over the wire is plain JSON
