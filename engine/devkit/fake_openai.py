"""A scripted OpenAI-compatible chat server for tests: 127.0.0.1 only, ephemeral port, no outbound traffic.

Directives in the last user message's text steer the answers to that prompt; every directive takes an
optional `xN` suffix meaning "only the first N calls of this prompt" (without it: every call).

    [[fail:429x2]]     answer 429 to the first two calls, then succeed ([[status:400]] is the same as fail)
    [[retry-after:S]]  send `Retry-After: S` with the failure answers
    [[sleep:S]]        wait S seconds before answering (woken early when the server stops)
    [[truncate]]       200 whose JSON body is cut in half (Content-Length matches the cut body, as after a proxy)
    [[cut]]            200 announcing the full Content-Length, then closing after half the body
    [[malformed]]      200 with a JSON body that has no "choices"
    [[raw]]            200 whose message content is not JSON (for json_mode callers)
    [[usage:P,C]]      report P prompt and C completion tokens

A normal answer's content is the JSON object {"echo": <prompt without directives>, "n_media": <media parts>}
with usage prompt_tokens = words in all text parts and completion_tokens = 5. Calls are counted per prompt
text; the server also records arrival times, Authorization headers, request bodies and the peak number of
requests in flight.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any], str], dict[str, Any] | None]
_DIRECTIVE = re.compile(r"\[\[([a-z-]+)(?::([^\]x]*))?(?:x(\d+))?\]\]")
DEFAULT_COMPLETION_TOKENS = 5


@dataclass(frozen=True)
class Directive:
    name: str
    arg: str
    count: int | None

    def active(self, call: int) -> bool:
        return self.count is None or call <= self.count


def parse_directives(text: str) -> dict[str, Directive]:
    return {m[1]: Directive(m[1], m[2] or "", int(m[3]) if m[3] else None) for m in _DIRECTIVE.finditer(text)}


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (its text parts joined)."""
    user = [m for m in messages if m.get("role") == "user"]
    return _texts(user[-1].get("content")) if user else ""


def _texts(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads are joined by server_close(): a test ends only after every handler has.
    daemon_threads = False
    block_on_close = True
    # The listen backlog (socketserver's default is 5): a client with 32 requests in flight opens 32 connections
    # at once, and connections beyond the backlog were reset (connection_error) before a handler could take them.
    request_queue_size = 128
    fake: FakeOpenAI


class FakeOpenAI:
    """`with FakeOpenAI() as server:` ... `server.url` is the base_url ("http://127.0.0.1:PORT/v1")."""

    def __init__(self, responder: Responder | None = None) -> None:
        # responder(body, prompt) -> {"status": N} | {"sleep": S} | {"truncate": True} | {"content": str} | None
        # (None: the directive/echo behaviour). It lets a test script answers per request body.
        self.responder = responder
        self.calls: Counter[str] = Counter()
        self.call_times: dict[str, list[float]] = defaultdict(list)
        self.auth_headers: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # wakes handlers sleeping on a [[sleep]] directive
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def arrive(self, prompt: str, auth: str | None, body: dict[str, Any]) -> int:
        """Records a call and returns its number for this prompt (1-based)."""
        with self._lock:
            self.calls[prompt] += 1
            self.call_times[prompt].append(time.monotonic())
            self.auth_headers.append(auth)
            self.bodies.append(body)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return self.calls[prompt]

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # keep test output clean

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/chat/completions":
            self._send(404, _error_body(404))
            return
        fake = self.server.fake
        prompt = prompt_text(body.get("messages", []))
        call = fake.arrive(prompt, self.headers.get("Authorization"), body)
        self._released = False
        try:
            self._answer(body, prompt, call)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer
        finally:
            self._release()

    def _release(self) -> None:
        """Ends this request's in-flight count once. Called before the response is written: a client that has
        read the whole answer may send its next request before this thread gets to run again, and counting
        after the write would then see one request too many in flight."""
        if not self._released:
            self._released = True
            self.server.fake.leave()

    def _answer(self, body: dict[str, Any], prompt: str, call: int) -> None:
        scripted = self.server.fake.responder(body, prompt) if self.server.fake.responder else None
        if scripted is not None:
            self._scripted(body, scripted)
            return
        plan = {name: d for name, d in parse_directives(prompt).items() if d.active(call)}
        if "sleep" in plan and self.server.fake.stopping.wait(float(plan["sleep"].arg)):
            return  # the server is stopping: drop the connection unanswered
        failure = plan.get("fail") or plan.get("status")
        if failure is not None:
            extra = {"Retry-After": plan["retry-after"].arg} if "retry-after" in plan else {}
            self._send(int(failure.arg), _error_body(int(failure.arg)), extra)
            return
        if "malformed" in plan:
            self._send(200, json.dumps({"id": "chatcmpl-fake", "object": "chat.completion"}).encode())
            return
        full = _completion(body, prompt, plan)
        if "truncate" in plan:
            self._send(200, full[: len(full) // 2])
        elif "cut" in plan:
            self._send(200, full[: len(full) // 2], length=len(full))
        else:
            self._send(200, full)

    def _scripted(self, body: dict[str, Any], answer: dict[str, Any]) -> None:
        if "sleep" in answer and self.server.fake.stopping.wait(float(answer["sleep"])):
            return
        if "status" in answer:
            self._send(int(answer["status"]), _error_body(int(answer["status"])))
            return
        full = _completion(body, "", {}, content=answer.get("content", ""))
        self._send(200, full[: len(full) // 2] if answer.get("truncate") else full)

    def _send(self, status: int, payload: bytes, extra: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self._release()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True


def _completion(body: dict[str, Any], prompt: str, plan: dict[str, Directive], content: str | None = None) -> bytes:
    messages = body.get("messages", [])
    clean = _DIRECTIVE.sub("", prompt).strip()
    n_media = sum(1 for m in messages if isinstance(m.get("content"), list)
                  for part in m["content"] if part.get("type") != "text")
    if content is None:
        content = "not json {" if "raw" in plan else json.dumps({"echo": clean, "n_media": n_media}, sort_keys=True)
    if "usage" in plan:
        prompt_tokens, completion_tokens = (int(n) for n in plan["usage"].arg.split(","))
    else:
        prompt_tokens = sum(len(_texts(m.get("content")).split()) for m in messages)
        completion_tokens = DEFAULT_COMPLETION_TOKENS
    return json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }).encode()


def _error_body(status: int) -> bytes:
    return json.dumps({"error": {"message": f"fake error {status}", "type": "fake", "code": status}}).encode()
