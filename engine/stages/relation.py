"""Audio-visual relation judge for SABER-Test: consistent | inconsistent, with an intensity 0-10.

It reads the clip's six-dimension annotation (text only, no media), so it runs after the stream over the
kept clips; a failed verdict only keeps a clip out of the test candidates, it never rejects it from sed/.
"""

from __future__ import annotations

from engine.core.schema import ANNOTATION_FIELDS
from engine.models.backends.base import ChatBackend, ChatRequest
from engine.models.prompts import AV_RELATION_JUDGE, fence
from engine.models.verdicts import RELATION_SCHEMA, parse_relation
from engine.stages.base import Row
from engine.stages.model_stage import BatchedModelStage

# Headings the judge sees for each annotation field (the flattened column names mean little to a model).
_HEADINGS = {"video_desc": "Scene", "speech_content": "Speech content", "acoustic_feat": "Acoustic features",
             "facial_exp_desc": "Facial expression", "body_lang_desc": "Body language",
             "sentiment_analysis": "Overall reasoning"}


def annotation_text(row: Row) -> str:
    return "\n".join(f"{_HEADINGS[k]}: {row[k]}" for k in ANNOTATION_FIELDS if row.get(k))


class RelationJudgeStage(BatchedModelStage):
    name = "relation"
    prompt = AV_RELATION_JUDGE
    unparseable_reason = "judge_unparseable"
    requires = ANNOTATION_FIELDS
    produces = ("av_relation", "av_intensity", "av_reason", "provenance")

    def __init__(self, backend: ChatBackend, max_tokens: int = 128) -> None:
        super().__init__(backend)
        self.max_tokens = max_tokens

    def request(self, row: Row) -> ChatRequest:
        text = AV_RELATION_JUDGE.text.format(annotation=fence(annotation_text(row)))
        return ChatRequest([{"role": "user", "content": text}], max_tokens=self.max_tokens, json_mode=True,
                           response_schema=RELATION_SCHEMA, tag=self.name)

    def accept(self, row: Row, text: str) -> None:
        verdict = parse_relation(text)
        row.update(av_relation=verdict.relation, av_intensity=verdict.intensity, av_reason=verdict.reason)
