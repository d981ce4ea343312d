"""What every model-calling stage shares: one batched backend call, strict parsing, one repair re-ask.

Answers that fail to parse are asked once more (all of them in a second batched call) with the parse error;
what still fails, and every backend failure (rate limit exhausted, timeout, ...), is a recorded rejection.
"""

from __future__ import annotations

import json
from typing import ClassVar

from engine import monitoring
from engine.annotation import AnnotationError
from engine.backends.base import ChatBackend, ChatRequest, ChatResult
from engine.media import MediaError
from engine.prompts import REPAIR, Prompt
from engine.schema import is_alive, reject
from engine.stages.base import Row, RowStage, StageInputError
from engine.verdicts import VerdictError

FormatError = (VerdictError, AnnotationError)


class BatchedModelStage(RowStage):
    prompt: ClassVar[Prompt]
    unparseable_reason: ClassVar[str] = "unparseable_answer"
    repair: ClassVar[bool] = True

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend

    def wants(self, row: Row) -> bool:
        return True

    def request(self, row: Row) -> ChatRequest:
        raise NotImplementedError

    def accept(self, row: Row, text: str) -> None:
        """Parses an answer into the row; raises a FormatError for a malformed one, MediaError to reject."""
        raise NotImplementedError

    def __call__(self, rows: list[Row]) -> list[Row]:
        if rows and (missing := [c for c in self.requires if c not in rows[0]]):
            raise StageInputError(f"{self.name} stage needs columns {missing}")
        with monitoring.stage_timer(self.name, len(rows)):
            todo = [row for row in rows if is_alive(row) and self.wants(row)]
            requests = [self.request(row) for row in todo]
            retry = self._answer(todo, requests, self.backend.chat(requests), final=not self.repair)
            if retry:
                again = [self._repair_request(req, text, error) for _, req, text, error in retry]
                self._answer([r for r, *_ in retry], again, self.backend.chat(again), final=True)
        monitoring.record_backend_usage(self.backend)  # calls, tokens, cache hits, cost since the last batch
        return rows

    def _answer(self, rows: list[Row], requests: list[ChatRequest], results: list[ChatResult],
                final: bool) -> list[tuple[Row, ChatRequest, str, str]]:
        retry = []
        for row, request, result in zip(rows, requests, results, strict=True):
            if not result.ok:
                reject(row, self.name, "model_error", f"{self.backend.model_id}: {result.error}")
                continue
            try:
                self.accept(row, result.text or "")
                self._record(row)
            except FormatError as err:
                if final:
                    reject(row, self.name, self.unparseable_reason, f"{err} | answer: {(result.text or '')[:200]}")
                else:
                    retry.append((row, request, result.text or "", str(err)))
            except MediaError as err:
                self._record(row)
                reject(row, self.name, err.reason, err.detail)
        return retry

    def _repair_request(self, request: ChatRequest, answer: str, error: str) -> ChatRequest:
        messages = [*request.messages, {"role": "assistant", "content": answer},
                    {"role": "user", "content": REPAIR.text.format(error=error)}]
        return ChatRequest(messages, max_tokens=request.max_tokens, temperature=0.0, json_mode=request.json_mode,
                           media_key=request.media_key, tag=f"{request.tag}-repair")

    def _record(self, row: Row) -> None:
        self.record_provenance(row, self.backend.model_id)

    @classmethod
    def record_provenance(cls, row: Row, model_id: str) -> None:
        """Provenance: which model and which prompt version made this stage's columns."""
        provenance = json.loads(row.get("provenance") or "{}")
        provenance[cls.name] = f"{model_id} {cls.prompt.version}"
        row["provenance"] = json.dumps(provenance, sort_keys=True)
