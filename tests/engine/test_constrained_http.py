"""The HTTP backend sends a verdict's JSON Schema as response_format json_schema when its config says the API
takes one (the loopback fake API records what it received), and json_object otherwise."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from engine.devkit.fake_openai import FakeOpenAI
from engine.models.backends.base import ChatRequest, request_key
from engine.models.backends.http import HttpBackendConfig, HttpChatBackend
from engine.models.verdicts import RELATION_SCHEMA
from tests.engine.test_http_backend import _PROXY_VARS


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    for name in _PROXY_VARS:  # a proxy from the environment would send test traffic off the machine
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def make_backend(server: FakeOpenAI) -> Iterator[Callable[..., HttpChatBackend]]:
    backends: list[HttpChatBackend] = []

    def make(**overrides: object) -> HttpChatBackend:
        settings = dict(base_url=server.url, model="fake-model", api_key_env="", max_retries=1, timeout_s=5.0,
                        backoff_base_s=0.001, backoff_max_s=0.01, max_concurrency=2)
        backend = HttpChatBackend(HttpBackendConfig(**(settings | overrides)))
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def _judge_request(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], max_tokens=64, json_mode=True,
                       response_schema=RELATION_SCHEMA, tag="relation")


def test_the_schema_goes_as_response_format_json_schema(server: FakeOpenAI, make_backend) -> None:
    [result] = make_backend(json_schema=True).chat([_judge_request("judge this")])
    assert result.ok
    assert server.bodies[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "relation_verdict", "schema": RELATION_SCHEMA.schema, "strict": True}}


def test_an_api_without_schemas_gets_json_object_and_the_old_cache_key(server: FakeOpenAI, make_backend,
                                                                        tmp_path) -> None:
    backend = make_backend(cache_dir=str(tmp_path / "cache"))
    [first] = backend.chat([_judge_request("judge that")])
    assert server.bodies[-1]["response_format"] == {"type": "json_object"}
    # Cached under the key of the same request without a schema: answers cached before schemas existed are reused.
    plain = ChatRequest([{"role": "user", "content": "judge that"}], max_tokens=64, json_mode=True, tag="relation")
    calls = server.total_calls
    [again] = backend.chat([plain])
    assert (again.cached, again.text, server.total_calls) == (True, first.text, calls)
    assert request_key("fake-model", plain) != request_key("fake-model", _judge_request("judge that"))


def test_a_schema_request_is_cached_apart_when_the_schema_is_sent(server: FakeOpenAI, make_backend, tmp_path) -> None:
    cache = str(tmp_path / "cache")
    [_] = make_backend(cache_dir=cache).chat([_judge_request("judge it")])
    calls = server.total_calls
    [again] = make_backend(cache_dir=cache, json_schema=True).chat([_judge_request("judge it")])
    assert (again.cached, server.total_calls) == (False, calls + 1)  # a different question: asked again
