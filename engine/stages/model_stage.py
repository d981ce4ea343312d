"""What every model-calling stage shares: one batched backend call, strict parsing, one repair re-ask.

Answers that fail to parse are asked once more (all of them in a second batched call) with the parse error;
what still fails is a final rejection. A backend failure (rate limit exhausted, timeout, server down, out of
memory) is a retryable one (engine.core.failures): the clip is done again by the next run, and what was answered
before comes from the response cache. A batch call that raises (a local model running out of memory, a crashed
client) is split in halves and retried, down to single requests, so one bad request costs only its own clip.

An actor may run several batches at once (`batches_per_actor`: HTTP stages, whose backend is thread-safe and keeps
its own max_concurrency cap), so that a batch waiting on one slow answer does not leave the window idle; a stage
keeps no state between calls but its backend.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, ClassVar

from engine.core.failures import backend_failure, exception_failure
from engine.core.media import MediaError
from engine.core.schema import is_alive, reject
from engine.models.annotation import AnnotationError
from engine.models.backends.base import ChatBackend, ChatRequest, ChatResult, batches_in_flight
from engine.models.prompts import REPAIR, Prompt
from engine.models.verdicts import VerdictError
from engine.ops import monitoring
from engine.stages.base import Row, RowStage, StageInputError

if TYPE_CHECKING:
    from engine.core.config import BackendConfig

log = logging.getLogger(__name__)

FormatError = (VerdictError, AnnotationError)


class BatchedModelStage(RowStage):
    prompt: ClassVar[Prompt]
    unparseable_reason: ClassVar[str] = "unparseable_answer"
    repair: ClassVar[bool] = True

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend
        # Usage is reported as the difference between two cumulative snapshots: concurrent batches take turns.
        self._usage_lock = threading.Lock()

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
            retry = self._answer(todo, requests, self._chat(requests), final=not self.repair)
            if retry:
                again = [self._repair_request(req, text, error) for _, req, text, error in retry]
                self._answer([r for r, *_ in retry], again, self._chat(again), final=True)
        with self._usage_lock:
            monitoring.record_backend_usage(self.backend)  # calls, tokens, cache hits, cost since the last batch
        return rows

    def _chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """The backend's answers; a call that raises is split in halves and retried, and a single request that
        still raises gets an error result named after the exception (out_of_memory, internal_error, ...)."""
        if not requests:
            return []
        try:
            return self.backend.chat(requests)
        except Exception as err:  # noqa: BLE001 - isolated per request below, logged with its traceback
            if len(requests) == 1:
                log.exception("%s: one request failed in %s", self.name, self.backend.model_id)
                return [ChatResult(text=None, error=exception_failure(err)[0])]
            log.warning("%s: a batch of %d failed (%s: %s); retrying it in halves", self.name, len(requests),
                        type(err).__name__, err)
            half = len(requests) // 2
            return self._chat(requests[:half]) + self._chat(requests[half:])

    def _answer(self, rows: list[Row], requests: list[ChatRequest], results: list[ChatResult],
                final: bool) -> list[tuple[Row, ChatRequest, str, str]]:
        retry = []
        for row, request, result in zip(rows, requests, results, strict=True):
            if not result.ok:
                reject(row, self.name, "model_error", f"{self.backend.model_id}: {result.error}",
                       backend_failure(result.error))
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
                           response_schema=request.response_schema, media_key=request.media_key,
                           tag=f"{request.tag}-repair")

    def _record(self, row: Row) -> None:
        self.record_provenance(row, self.backend.model_id)

    @classmethod
    def record_provenance(cls, row: Row, model_id: str) -> None:
        """Provenance: which model and which prompt version made this stage's columns."""
        provenance = json.loads(row.get("provenance") or "{}")
        provenance[cls.name] = f"{model_id} {cls.prompt.version}"
        row["provenance"] = json.dumps(provenance, sort_keys=True)


def batches_per_actor(backend: BackendConfig | None, batch_size: int) -> int:
    """Batches one actor of a model stage's pool runs at once (engine.dataset.pipeline gives its actors that many
    concurrent calls): for an HTTP backend enough to keep max_concurrency requests in flight across batches
    (engine.models.backends.base.batches_in_flight); one for local models, whose batch already fills the device."""
    if backend is None or backend.kind != "http":
        return 1
    return batches_in_flight(backend.http.max_concurrency, batch_size)
