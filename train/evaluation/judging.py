"""LLM judges of model answers (SABER-Test six dimensions 0-3; EMER criteria 0-10) as engine model stages.

Each is a `BatchedModelStage`: one batched backend call, the strict parser of `parsers.py`, one repair re-ask
of the answers that fail it, and every failure left on the row with its reason (`judge_unparseable`,
`model_error` with the backend's error) rather than a score. `JudgeBatch` is the actor-pool callable that turns
answered items into JUDGMENT_SCHEMA rows; the runner's Ray Data plan maps it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar

import pyarrow as pa

from engine.core.schema import ANNOTATION_FIELDS
from engine.models.backends.base import ChatBackend, ChatRequest, ResponseSchema
from engine.models.verdicts import scores_schema
from engine.stages.base import Row
from engine.stages.model_stage import BatchedModelStage
from train.evaluation import prompts
from train.evaluation.judge_metrics import (
    EMER_CRITERIA,
    EMER_SCORE_RANGE,
    SABER_TEST_DIMENSIONS,
    SABER_TEST_SCORE_RANGE,
)
from train.evaluation.parsers import parse_emer_verdict, parse_saber_test_verdict

JUDGMENT_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("judge_status", pa.string(), nullable=False),  # ok | failed
    pa.field("judge_scores", pa.string()),  # JSON {key: int}, only when ok
    pa.field("judge_raw", pa.string()),  # the judge's last answer as given (truncated), for audits
    pa.field("judge_fail_reason", pa.string()),
    pa.field("judge_fail_detail", pa.string()),
    pa.field("judge_id", pa.string(), nullable=False),  # "<judge model> <prompt name>@<prompt hash>"
    pa.field("judged_at", pa.timestamp("ms", tz="UTC")),
])
_RAW_CHARS = 2000


class AnswerJudgeStage(BatchedModelStage):
    """Scores one model answer per row against the row's reference; `judge_scores` holds the JSON scores."""

    unparseable_reason = "judge_unparseable"
    requires: ClassVar[tuple[str, ...]] = ("item_id", "answer", "answer_status")
    produces = ("judge_scores", "judge_raw", "provenance")
    parse: ClassVar[Callable[[str | None], dict[str, int]]]
    # The verdict's JSON Schema: backends that constrain decoding (local xgrammar, vLLM, HTTP json_schema) can
    # only write what `parse` accepts; the strict parser and the repair re-ask stay for APIs that ignore it.
    schema: ClassVar[ResponseSchema]

    def __init__(self, backend: ChatBackend, max_tokens: int = 256) -> None:
        super().__init__(backend)
        self.max_tokens = max_tokens

    @classmethod
    def judge_id(cls, model_id: str) -> str:
        return f"{model_id} {cls.prompt.version}"

    def wants(self, row: Row) -> bool:
        return row["answer_status"] == "ok"

    def prompt_text(self, row: Row) -> str:
        raise NotImplementedError

    def request(self, row: Row) -> ChatRequest:
        return ChatRequest([{"role": "user", "content": self.prompt_text(row)}], max_tokens=self.max_tokens,
                           json_mode=True, response_schema=type(self).schema, tag=self.name)

    def accept(self, row: Row, text: str) -> None:
        row["judge_raw"] = text[:_RAW_CHARS]
        row["judge_scores"] = json.dumps(type(self).parse(text), sort_keys=True)


class SaberTestJudgeStage(AnswerJudgeStage):
    name = "saber_test_judge"
    prompt = prompts.SABER_TEST_JUDGE
    requires = (*AnswerJudgeStage.requires, *ANNOTATION_FIELDS)
    parse = staticmethod(parse_saber_test_verdict)
    schema = scores_schema("saber_test_scores", SABER_TEST_DIMENSIONS, *SABER_TEST_SCORE_RANGE)

    def prompt_text(self, row: Row) -> str:
        return prompts.saber_test_judge_text(row, row["answer"] or "")


class EmerJudgeStage(AnswerJudgeStage):
    name = "emer_judge"
    prompt = prompts.EMER_JUDGE
    requires = (*AnswerJudgeStage.requires, "reference", "gold_labels")
    parse = staticmethod(parse_emer_verdict)
    schema = scores_schema("emer_scores", EMER_CRITERIA, *EMER_SCORE_RANGE)

    def prompt_text(self, row: Row) -> str:
        return prompts.emer_judge_text(row, row["answer"] or "")


JUDGE_STAGES: dict[str, type[AnswerJudgeStage]] = {"saber_test": SaberTestJudgeStage, "emer": EmerJudgeStage}


class JudgeBatch:
    """Actor-pool callable: answered item rows -> the same rows followed by their JUDGMENT_SCHEMA columns (the
    stage, and its model, load once per actor). Rows whose answer failed are not sent to the judge."""

    def __init__(self, factory: Callable[[], AnswerJudgeStage]) -> None:
        self.stage = factory()

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = [dict(r, status="kept", reject_stage=None, reject_reason=None, reject_detail=None, provenance=None,
                     judge_scores=None, judge_raw=None) for r in table.to_pylist()]
        judge_id = self.stage.judge_id(self.stage.backend.model_id)
        now = datetime.now(timezone.utc)
        verdicts = pa.Table.from_pylist([judgment(row, judge_id, now) for row in self.stage(rows)],
                                        schema=JUDGMENT_SCHEMA)
        for field in JUDGMENT_SCHEMA:
            if field.name != "item_id":
                table = table.append_column(field, verdicts.column(field.name))
        return table


def judgment(row: Row, judge_id: str, when: datetime) -> dict[str, Any]:
    ok = row["status"] == "kept" and row["judge_scores"] is not None
    reason = None if ok else (row["reject_reason"] or "not_judged")
    return {"item_id": row["item_id"], "judge_status": "ok" if ok else "failed",
            "judge_scores": row["judge_scores"] if ok else None, "judge_raw": row["judge_raw"],
            "judge_fail_reason": reason, "judge_fail_detail": None if ok else row["reject_detail"],
            "judge_id": judge_id, "judged_at": when}


def verdict_of(judge_status: str | None, judge_scores: str | None) -> dict[str, int] | None:
    """The scores of an ok judgment, None for a failed one (metrics count it per dimension)."""
    return json.loads(judge_scores) if judge_status == "ok" and judge_scores else None
