"""OpenAI-compatible chat over HTTP (GPT-4o, Gemini's OpenAI endpoint, a vLLM or SGLang server).

Why not Ray's `ray.data.llm.HttpRequestProcessorConfig` (read in ray 2.60,
ray/llm/_internal/batch/stages/http_request_stage.py): it is a whole Ray Data processor, not a client a
stage can call; it paces by QPS and then awaits the responses one after another, so there is no
concurrency cap; it retries 408/429/502/503/504 with a fixed doubling wait (no jitter, no Retry-After,
500 not retried) and raises RuntimeError for the whole batch once one row runs out of retries; a non-JSON
body crashes it; the key must travel in its `headers` config; and it has no response cache, no token or
cost log and none of our error names. So the project keeps its own small client: a thread pool of
`requests` sessions (threads rather than an event loop, because `chat()` is synchronous and may be called
from an async Ray actor whose loop is already running).

The API key is read once, when the backend is built inside the process that calls the API (the stage's
actor), from a file on the node (see `load_api_key`), and goes only into the Authorization header: never
onto the config, into the cache, the usage log, a log line or any process's environment.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
from pydantic import ConfigDict, Field, field_validator, model_validator
from urllib3.exceptions import ReadTimeoutError

from engine.core.config_base import ConfigSection
from engine.models.backends.base import ChatRequest, ChatResult, RequestPacer, UsageLog, request_key
from engine.models.backends.response_cache import ResponseCache

log = logging.getLogger(__name__)

_ERROR_NAMES = {400: "bad_request_400", 401: "auth_error_401", 403: "auth_error_403", 404: "not_found_404",
                413: "too_large_413", 422: "bad_request_422", 429: "rate_limited"}
_TRANSIENT = {"rate_limited", "timeout", "connection_error", "malformed_response"}
# Proxies truncate bodies now and then, but a server that keeps answering garbage will not stop doing so.
_MAX_MALFORMED = 2

# Where a cluster node keeps its API keys: a folder with one file per key name holding only the key (a Kubernetes
# Secret mounted as a volume, or what cluster/aws/fetch_secrets.py writes). Why files and not the environment:
# a variable set for `ray start` is inherited by every worker, job driver and subprocess (ffmpeg, pip) of every
# job on the node and shows in each one's /proc/PID/environ and in crash or environment dumps; a file is read
# only by the backend that needs it, in its actor's __init__. This variable holds a path, never a key.
KEY_DIR_ENV = "SABER_API_KEY_DIR"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Config fields that would carry a credential. None exists: a key in a config would be saved in OUT/config.yaml,
# logged with the resolved config and shipped to every actor, so such a field is refused without echoing it.
_CREDENTIAL_FIELD = re.compile(r"(?i)key|token|secret|password|auth|header|bearer")


class HttpBackendConfig(ConfigSection):
    """An OpenAI-compatible endpoint, its limits and prices."""

    # A ValidationError of this section prints no input values: one of them may be a key typed in the wrong place.
    model_config = ConfigDict(hide_input_in_errors=True)

    base_url: str  # e.g. "https://api.openai.com/v1"; the client posts to {base_url}/chat/completions
    model: str
    # The key's NAME, never its value; "" for servers that need no key (a local vLLM). The key is read from
    # api_key_file, else $SABER_API_KEY_DIR/<name> (a cluster node), else the environment variable <name>.
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None  # a path to a file holding only the key (never the key itself)
    max_concurrency: int = Field(8, ge=1, le=512)  # HTTP requests in flight per backend (one per actor)
    # Request starts per second per backend, retries included, spread evenly; None: no pacing. A cluster-wide quota
    # of Q/s over a pool of up to A actors is Q/A here (a 429 with Retry-After still slows everyone down).
    requests_per_s: float | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    cache_dir: str | None = None  # local folder or s3://; None disables the response cache
    usd_per_1k_prompt: float = Field(0.0, ge=0)
    usd_per_1k_completion: float = Field(0.0, ge=0)
    # Send a verdict's schema as response_format {"type": "json_schema", ...} (strict). Only for APIs that take
    # it (OpenAI, vLLM and SGLang servers; Gemini's OpenAI endpoint); otherwise {"type": "json_object"} is asked
    # and the strict parser plus one repair re-ask do the work. Part of the cache key only when on.
    json_schema: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_key_values(cls, data: Any) -> Any:
        """Refuses a key typed where a name or path goes. A model-level check, so that the error (which the
        config loader prints, and a job log keeps) names the field but never shows the value."""
        if not isinstance(data, dict):
            return data
        fields = set(cls.model_fields)
        for name in data:
            if name not in fields and _CREDENTIAL_FIELD.search(str(name)):
                raise ValueError(f"{name}: API keys never go in a config (value not shown); name the key with "
                                 f"api_key_env and keep it in a file (api_key_file, ${KEY_DIR_ENV}) or the environment")
        env = data.get("api_key_env")
        if env not in (None, "") and not (isinstance(env, str) and _ENV_NAME.match(env)):
            raise ValueError("api_key_env must be the NAME of an environment variable (capitals, digits and _, e.g. "
                             "GEMINI_API_KEY), not a key; the value given is not shown")
        path = data.get("api_key_file")
        if path is not None and not (isinstance(path, str) and "/" in path):
            raise ValueError("api_key_file must be a path with a folder (e.g. /etc/saber/api-keys/GEMINI_API_KEY "
                             "or ./gemini.key), not a key; the value given is not shown")
        return data

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


@dataclass(frozen=True)
class _Outcome:
    """One HTTP attempt."""

    text: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_after: float | None = None


class _BearerAuth(requests.auth.AuthBase):
    # An auth object rather than a plain header: requests then never replaces it with ~/.netrc credentials.
    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<hidden>)"


class HttpChatBackend:
    """ChatBackend over `POST {base_url}/chat/completions` with retries, a concurrency cap and a cache."""

    def __init__(self, config: HttpBackendConfig) -> None:
        self.config = config
        self.model_id = config.model
        self._url = f"{config.base_url}/chat/completions"
        self._cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self._usage = UsageLog(config.model, config.usd_per_1k_prompt, config.usd_per_1k_completion)
        # Read once, here, in the actor: a missing key is a config error raised before any work is scheduled.
        key, source = load_api_key(config)
        self._bearer = _BearerAuth(key) if key else None
        log.info("%s: API key from %s", config.model, source)
        # A worker carries one request through its retries; only the POST itself holds one of the max_concurrency
        # slots, so a request waiting out a backoff frees its slot. Twice as many workers as slots: the pending
        # requests of concurrent chat() calls (several batches of one actor) queue for slots, not for threads.
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._pacer = RequestPacer(config.requests_per_s) if config.requests_per_s else None
        self._pool = ThreadPoolExecutor(max_workers=2 * config.max_concurrency, thread_name_prefix="chat-http")
        self._pending: dict[str, Future[ChatResult]] = {}  # request key -> its answer underway, across chat() calls
        self._pending_lock = threading.RLock()  # reentrant: a done callback may run inside submit's critical section
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Thread-safe: several batches may call at once and share the max_concurrency slots. A request identical
        to one underway (the same judge question for two clips, in this batch or another) waits for that answer
        instead of paying again: the response cache only knows an answer after it came back."""
        requests = [self._as_sent(request) for request in requests]
        keys = [request_key(self.model_id, request) for request in requests]
        shared, futures = [], []
        with self._pending_lock:
            for request, key in zip(requests, keys, strict=True):
                shared.append(key in self._pending)
                futures.append(self._pending[key] if shared[-1] else self._submit(request, key))
        results = []
        for request, future, again in zip(requests, futures, shared, strict=True):
            result = future.result()
            if again:  # the same answer, not paid again: counted like a cache hit
                result = replace(result, cached=True, attempts=0)
                self._usage.record(request.tag, result)
            results.append(result)
        return results

    def _submit(self, request: ChatRequest, key: str) -> Future[ChatResult]:
        future = self._pending[key] = self._pool.submit(self._answer, request, key, self._bearer)
        future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def _forget(self, key: str, future: Future[ChatResult]) -> None:
        with self._pending_lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def usage(self) -> dict[str, Any]:
        return self._usage.as_dict()

    def log_usage(self) -> None:
        log.info("%s", self._usage.summary())

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def __enter__(self) -> HttpChatBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _answer(self, request: ChatRequest, key: str, auth: _BearerAuth | None) -> ChatResult:
        result = self._cached(key)
        if result is None:
            result = self._call_with_retries(request, auth)
            if result.ok and self._cache:
                self._store(key, result)
        self._usage.record(request.tag, result)
        return result

    def _cached(self, key: str) -> ChatResult | None:
        hit = self._cache.get(key) if self._cache else None
        if hit is None or not isinstance(hit.get("text"), str):
            return None
        return ChatResult(text=hit["text"], error=None, prompt_tokens=_count(hit.get("prompt_tokens")),
                          completion_tokens=_count(hit.get("completion_tokens")), cached=True, attempts=0)

    def _store(self, key: str, result: ChatResult) -> None:
        entry = {"model": self.model_id, "text": result.text, "prompt_tokens": result.prompt_tokens,
                 "completion_tokens": result.completion_tokens}
        try:
            self._cache.put(key, entry)
        except OSError as err:
            # The answer is paid for and correct; losing its cache entry only costs a call on a rerun.
            log.warning("could not write response cache entry %s: %s", key, err)

    def _call_with_retries(self, request: ChatRequest, auth: _BearerAuth | None) -> ChatResult:
        body = json.dumps(self._payload(request)).encode("utf-8")
        malformed = 0
        for attempt in range(self.config.max_retries + 1):
            outcome = self._send(body, auth)
            if outcome.error is None:
                return ChatResult(text=outcome.text, error=None, prompt_tokens=outcome.prompt_tokens,
                                  completion_tokens=outcome.completion_tokens, attempts=attempt + 1)
            malformed += outcome.error == "malformed_response"
            if not _is_transient(outcome.error) or malformed >= _MAX_MALFORMED or attempt == self.config.max_retries:
                break
            wait = self._backoff(attempt, outcome.retry_after)
            log.debug("chat %s: %s on attempt %d, retrying in %.3fs", request.tag, outcome.error, attempt + 1, wait)
            time.sleep(wait)
        log.warning("chat %s failed for good: %s after %d attempts", request.tag or "-", outcome.error, attempt + 1)
        return ChatResult(text=None, error=outcome.error, attempts=attempt + 1)

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model_id, "messages": request.messages,
                                   "max_tokens": request.max_tokens, "temperature": request.temperature}
        if request.response_schema is not None:  # only left on by _as_sent when the API takes schemas
            schema = request.response_schema
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema.name, "schema": schema.schema, "strict": True}}
        elif request.json_mode:
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _as_sent(self, request: ChatRequest) -> ChatRequest:
        """The request as this API gets it: without its schema when the config says the API takes none."""
        if self.config.json_schema or request.response_schema is None:
            return request
        return replace(request, response_schema=None)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = self.config.backoff_max_s
        if retry_after is not None:
            return min(retry_after, cap)
        # Full jitter: spreads the retries of many actors that were throttled at the same moment.
        return random.uniform(0, min(cap, self.config.backoff_base_s * 2**attempt))

    def _send(self, body: bytes, auth: _BearerAuth | None) -> _Outcome:
        """One attempt, holding a slot (at most max_concurrency in flight) and paced by requests_per_s."""
        with self._slots:
            if self._pacer is not None:
                self._pacer.wait()
            return self._post(body, auth)

    def _post(self, body: bytes, auth: _BearerAuth | None) -> _Outcome:
        try:
            response = self._session().post(self._url, data=body, auth=auth, timeout=self.config.timeout_s,
                                            headers={"Content-Type": "application/json"})
            content = response.content
        except requests.Timeout:
            return _Outcome(error="timeout")
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            return _Outcome(error="malformed_response")  # the body was cut off mid-way
        except requests.ConnectionError as err:
            # requests reports a read timeout while streaming the body as a ConnectionError.
            timed_out = bool(err.args) and isinstance(err.args[0], ReadTimeoutError)
            return _Outcome(error="timeout" if timed_out else "connection_error")
        if not 200 <= response.status_code < 300:
            return _Outcome(error=_status_error(response.status_code), retry_after=_retry_after(response))
        return _parse_completion(content)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._sessions_lock:
                self._sessions.append(session)
        return session


def load_api_key(config: HttpBackendConfig) -> tuple[str | None, str]:
    """The key and where it came from (a path or a variable name for the log, never the value): api_key_file,
    else $SABER_API_KEY_DIR/<api_key_env> when that file exists, else the environment variable (local runs)."""
    name = config.api_key_env
    if config.api_key_file:
        return _read_key_file(Path(config.api_key_file).expanduser(), "api_key_file"), f"file {config.api_key_file}"
    if not name:
        return None, "nowhere (api_key_env is empty: no Authorization header)"
    folder = os.environ.get(KEY_DIR_ENV)
    if folder and (Path(folder) / name).is_file():
        return _read_key_file(Path(folder) / name, KEY_DIR_ENV), f"file {Path(folder) / name}"
    if os.environ.get(name):
        return os.environ[name], f"environment variable {name}"
    looked = f"no file {Path(folder) / name} ({KEY_DIR_ENV}) and " if folder else ""
    raise ValueError(f"api_key_env: {looked}environment variable {name} is not set "
                     "(use api_key_env='' for a server that needs no key)")


def _read_key_file(path: Path, setting: str) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except OSError as err:  # the message names the path only: the file's content never reaches it
        raise ValueError(f"{setting}: cannot read the API key file {path}: {err.strerror}") from None
    if not key:
        raise ValueError(f"{setting}: the API key file {path} is empty")
    if mode & stat.S_IROTH:
        log.warning("API key file %s is readable by every user on the node: chmod 600 (or 440 for a group)", path)
    return key


def _status_error(status: int) -> str:
    if status >= 500:
        return f"server_error_{status}"
    return _ERROR_NAMES.get(status, f"client_error_{status}")


def _is_transient(error: str) -> bool:
    return error in _TRANSIENT or error.startswith("server_error_")


def _retry_after(response: requests.Response) -> float | None:
    """Retry-After in seconds on 429/503; the HTTP-date form is rare for APIs and falls back to jitter."""
    if response.status_code not in (429, 503):
        return None
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _parse_completion(content: bytes) -> _Outcome:
    """The text and token usage of an OpenAI chat completion; any shape problem is `malformed_response`."""
    try:
        data = json.loads(content)
        text = _message_text(data["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        return _Outcome(error="malformed_response")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return _Outcome(text=text, prompt_tokens=_count(usage.get("prompt_tokens")),
                    completion_tokens=_count(usage.get("completion_tokens")))


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with a list of parts
        return "".join(part["text"] for part in content if part.get("type") == "text")
    raise TypeError(f"message content is {type(content).__name__}")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
