"""The one interface every chat-model backend shares (HTTP, local transformers, ray.data.llm vLLM).

A backend takes a batch of `ChatRequest`s and returns one `ChatResult` per request, in order. A request
that fails for good is a result with `text=None` and a short machine-readable `error`, never an
exception: the stage above records it on the clip's row. Exceptions are for programming and config errors.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# Bumped when the key recipe changes, so old cache entries are never read under a new meaning.
_KEY_VERSION = 1


@dataclass(frozen=True)
class ResponseSchema:
    """The JSON Schema an answer must follow (engine.models.verdicts builds one per verdict from a pydantic model).

    Backends that can, constrain generation to it (local: a grammar over the tokenizer; HTTP: response_format
    json_schema; vLLM: structured outputs); the stage parses the answer strictly either way.
    """

    name: str  # [a-zA-Z0-9_-], as OpenAI's response_format.json_schema.name requires
    schema: dict[str, Any]

    @property
    def text(self) -> str:
        """The schema as compact JSON, keys in their order (a constrained answer writes properties in it)."""
        return json.dumps(self.schema, separators=(",", ":"))


@dataclass(frozen=True)
class ChatRequest:
    """One OpenAI-format chat call; `content` may be a list of text / image_url / input_audio parts."""

    messages: list[dict[str, Any]]
    max_tokens: int = 512
    temperature: float = 0.0
    json_mode: bool = False  # ask for response_format {"type": "json_object"}
    response_schema: ResponseSchema | None = None  # the verdict's schema, for backends that constrain decoding
    media_key: str | None = None  # a hash of the media, used in the cache key instead of the base64 payloads
    tag: str = ""  # which stage asks, for the token/cost log, e.g. "annotate"

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("ChatRequest.messages must not be empty")
        if self.max_tokens < 1:
            raise ValueError(f"ChatRequest.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class ChatResult:
    """The answer to one request. `text` is None exactly when `error` is set."""

    text: str | None
    error: str | None  # e.g. "rate_limited", "server_error_503", "timeout", "bad_request_400", "malformed_response"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    attempts: int = 0  # HTTP calls made for this request; 0 for a cache hit

    @property
    def ok(self) -> bool:
        return self.error is None


class ChatBackend(Protocol):
    model_id: str

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Results in the order of `requests`; never raises for a per-request failure."""
        ...


def batches_in_flight(max_concurrency: int, batch_size: int) -> int:
    """How many batches one actor of an HTTP stage runs at once, so that its backend keeps `max_concurrency` requests
    in flight: twice the window in pending requests. A batch returns only when its slowest request does; with two
    windows' worth pending, the rows whose batch waits on a straggler (a slow answer, a retry's backoff) can hold half
    of them while the other half keep every slot busy. More costs actor memory (the rows, media included) for a
    gain that `python jobs/benchmark.py models` measures."""
    return max(1, math.ceil(2 * max_concurrency / batch_size))


class RequestPacer:
    """At most `per_s` request starts per second, spread evenly, for every thread of one backend together.

    Each `wait()` reserves the next free start time under a lock and sleeps until it outside the lock, so waiting
    callers queue in order and a slow request never delays the start of another. `burst` starts may go at once
    after an idle spell (a token bucket of that size). Clock and sleep are injectable for tests.
    """

    def __init__(self, per_s: float, burst: int = 1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if per_s <= 0 or burst < 1:
            raise ValueError(f"RequestPacer needs per_s > 0 and burst >= 1, got {per_s} and {burst}")
        self._interval = 1.0 / per_s
        self._slack = (burst - 1) * self._interval
        self._clock, self._sleep = clock, sleep
        self._next = -math.inf  # the theoretical start of the next request at the steady rate
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Blocks until this caller may start a request; returns the seconds it waited."""
        with self._lock:
            now = self._clock()
            due = max(self._next, now)
            start = max(now, due - self._slack)
            self._next = due + self._interval
        if start > now:
            self._sleep(start - now)
        return start - now


def request_key(model_id: str, request: ChatRequest) -> str:
    """A stable sha256 naming what the model is asked, independent of how the media were base64-encoded.

    Inline media payloads are replaced by `media_key` (plus the part's position, so two frames of one clip
    stay distinct) or, without a media_key, by the sha256 of the payload itself. `tag` is left out: two
    stages asking the very same question may share the answer.
    """
    counter = itertools.count()
    messages = [_normalise(message, request.media_key, counter) for message in request.messages]
    identity = {
        "v": _KEY_VERSION,
        "model": model_id,
        "messages": messages,
        "max_tokens": int(request.max_tokens),
        # float(): 0 and 0.0 must give the same key.
        "temperature": float(request.temperature),
        "json_mode": bool(request.json_mode),
    }
    if request.response_schema is not None:  # only then: keys of requests without a schema stay as they were
        identity["schema"] = request.response_schema.schema
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _normalise(node: Any, media_key: str | None, counter: Iterator[int]) -> Any:
    """A copy of a message tree with every inline media payload replaced by a short stable reference."""
    if isinstance(node, list):
        return [_normalise(item, media_key, counter) for item in node]
    if not isinstance(node, dict):
        return node
    copy = {key: _normalise(value, media_key, counter) for key, value in node.items()}
    if node.get("type") == "input_audio" and isinstance(node.get("input_audio"), dict):
        # input_audio carries bare base64 (no data: prefix), so it is recognised by its part type.
        inner = dict(copy["input_audio"])
        if isinstance(inner.get("data"), str):
            inner["data"] = _media_ref(node["input_audio"]["data"], media_key, next(counter))
        copy["input_audio"] = inner
    for key, value in node.items():
        if isinstance(value, str) and _is_data_url(value):
            copy[key] = _media_ref(value, media_key, next(counter))
    return copy


def _is_data_url(value: str) -> bool:
    return value.startswith("data:") and ";base64," in value[:200]


def _media_ref(payload: str, media_key: str | None, position: int) -> str:
    if media_key is not None:
        return f"media:{media_key}:{position}"
    return "sha256:" + hashlib.sha256(payload.encode("ascii", errors="replace")).hexdigest()


@dataclass
class _TagUsage:
    requests: int = 0
    cache_hits: int = 0
    http_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: Counter[str] = field(default_factory=Counter)


class UsageLog:
    """Per-tag counts of requests, cache hits, failures by error, tokens and estimated USD; thread-safe.

    Tokens and cost count what was paid for: a cache hit adds a request and a hit, not its tokens.
    """

    def __init__(self, model_id: str, usd_per_1k_prompt: float = 0.0, usd_per_1k_completion: float = 0.0) -> None:
        self.model_id = model_id
        self._prices = (usd_per_1k_prompt, usd_per_1k_completion)
        self._tags: dict[str, _TagUsage] = {}
        self._lock = threading.Lock()

    def record(self, tag: str, result: ChatResult) -> None:
        with self._lock:
            usage = self._tags.setdefault(tag, _TagUsage())
            usage.requests += 1
            if result.cached:
                usage.cache_hits += 1
            else:
                usage.http_calls += result.attempts
                usage.prompt_tokens += result.prompt_tokens
                usage.completion_tokens += result.completion_tokens
            if result.error is not None:
                usage.failures[result.error] += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            tags = {tag: self._tag_dict(usage) for tag, usage in sorted(self._tags.items())}
        total = {name: sum(t[name] for t in tags.values()) for name in
                 ("requests", "cache_hits", "http_calls", "prompt_tokens", "completion_tokens", "usd")}
        return {"model": self.model_id, "tags": tags, "total": total}

    def summary(self) -> str:
        """One line for the log, e.g. `usage gpt-4o: annotate 20 req (5 cached, 1 failed: timeout=1) ...`."""
        usage = self.as_dict()
        parts = [f"{tag or '(untagged)'} {u['requests']} req ({u['cache_hits']} cached, {u['http_calls']} calls, "
                 f"{sum(u['failures'].values())} failed{_failures_text(u['failures'])}), "
                 f"{u['prompt_tokens']}+{u['completion_tokens']} tokens, ${u['usd']:.4f}"
                 for tag, u in usage["tags"].items()]
        body = "; ".join(parts) or "no requests"
        return f"usage {self.model_id}: {body}; total ${usage['total']['usd']:.4f}"

    def _tag_dict(self, usage: _TagUsage) -> dict[str, Any]:
        usd = (usage.prompt_tokens * self._prices[0] + usage.completion_tokens * self._prices[1]) / 1000
        return {"requests": usage.requests, "cache_hits": usage.cache_hits, "http_calls": usage.http_calls,
                "failures": dict(sorted(usage.failures.items())), "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "usd": usd}


def _failures_text(failures: dict[str, int]) -> str:
    return (": " + ", ".join(f"{error}={n}" for error, n in failures.items())) if failures else ""
