"""LLM judge of description-vs-annotation consistency (0-10 with a reason, parsed strictly)."""

from __future__ import annotations

from engine.core.media import MediaError
from engine.models.backends.base import ChatBackend, ChatRequest
from engine.models.prompts import CONSISTENCY_JUDGE, fence
from engine.models.verdicts import CONSISTENCY_SCHEMA, parse_consistency
from engine.stages.base import Row
from engine.stages.consistency import annotation_visual_text
from engine.stages.model_stage import BatchedModelStage


class ConsistencyJudgeStage(BatchedModelStage):
    name = "consistency"
    prompt = CONSISTENCY_JUDGE
    unparseable_reason = "judge_unparseable"
    requires = ("description", "video_desc", "facial_exp_desc", "body_lang_desc")
    produces = ("consistency_score", "consistency_method", "provenance")

    def __init__(self, backend: ChatBackend, min_score: int = 5) -> None:
        super().__init__(backend)
        self.min_score = min_score

    def wants(self, row: Row) -> bool:
        return bool(row["description"] and annotation_visual_text(row))

    def request(self, row: Row) -> ChatRequest:
        text = CONSISTENCY_JUDGE.text.format(annotation=fence(annotation_visual_text(row)),
                                             description=fence(row["description"]))
        return ChatRequest([{"role": "user", "content": text}], max_tokens=128, json_mode=True,
                           response_schema=CONSISTENCY_SCHEMA, tag=self.name)

    def accept(self, row: Row, text: str) -> None:
        verdict = parse_consistency(text)
        row.update(consistency_score=float(verdict.score), consistency_method=f"judge:{self.backend.model_id}")
        if verdict.score < self.min_score:
            raise MediaError("inconsistent_description", f"judge score {verdict.score} < {self.min_score}: "
                                                         f"{verdict.reason}")
