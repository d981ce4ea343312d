"""The one failure policy of every resumable loop (clips/, relations/, the preference ledger, evaluation).

A failed item is one of:
- `final`: a verdict about the data (bad media, a wrong transcript, an answer still unusable after the repair
  re-ask, a request the service refuses for its content). Counted as finished; a rerun never retries it.
- `retryable`: a fault of the world (network, storage throttling, an API outage that outlasted the backend's own
  retries, a rate limit beyond budget, out of memory, a lost worker, a time limit, a bug in our code). Not
  finished: the next run tries the item again, up to `max_attempts` runs in all.
- `gave_up`: retryable, but it failed that many times; finished from then on, with the last reason, so that a
  dead source does not keep a build from ever completing. Visible in the report.
"""

from __future__ import annotations

from typing import Literal

FailureClass = Literal["final", "retryable", "gave_up"]
FINAL: FailureClass = "final"
RETRYABLE: FailureClass = "retryable"
GAVE_UP: FailureClass = "gave_up"

# Backend errors (engine.models.backends: HTTP, local transformers, vLLM) that judge the request itself: the same
# request gets the same answer, so asking again only pays again.
FINAL_BACKEND_ERRORS = frozenset({
    "bad_request_400", "bad_request_422", "too_large_413",  # the service refuses this content
    "too_long",  # prompt + max_tokens exceed the model's context
    "bad_media", "unsupported_media",  # the processor cannot take this clip's media
})


def backend_failure(error: str | None) -> FailureClass:
    """The class of a backend error name: everything not known to judge the request is retryable (timeouts,
    5xx, 429, connection errors, auth and not-found errors that a fixed config cures, out of memory)."""
    return FINAL if error in FINAL_BACKEND_ERRORS else RETRYABLE


def exception_failure(err: BaseException) -> tuple[str, FailureClass]:
    """(reason, class) for an exception that escaped a stage's own checks on one item. None of these is a
    verdict about the data: storage and network errors, memory, time limits, and bugs (a rerun after the fix
    must redo the item) are all retryable."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return "out_of_memory", RETRYABLE
    if isinstance(err, TimeoutError):
        return "timeout", RETRYABLE
    if isinstance(err, OSError):  # s3fs/fsspec raise OSError subclasses for throttling, 5xx, dropped connections
        return "storage_error", RETRYABLE
    return "internal_error", RETRYABLE


def gave_up_detail(attempts: int, detail: str | None) -> str:
    return f"gave up after {attempts} attempts; last: {detail or '-'}"
