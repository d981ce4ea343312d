"""HttpChatBackend against the scripted fake server in engine/devkit/fake_openai.py (loopback only, tiny backoffs)."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
from pathlib import Path

import fsspec
import pytest

from engine.core.config import ConfigError, load_config
from engine.devkit.fake_openai import FakeOpenAI
from engine.models.backends.base import ChatRequest, request_key
from engine.models.backends.http import HttpBackendConfig, HttpChatBackend
from engine.models.backends.response_cache import ResponseCache

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def server(monkeypatch):
    # A proxy from the environment would send test traffic off the machine.
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def make_backend(server):
    backends = []

    def make(**overrides) -> HttpChatBackend:
        settings = dict(base_url=server.url, model="fake-model", api_key_env="", max_retries=3, timeout_s=5.0,
                        backoff_base_s=0.001, backoff_max_s=0.01, max_concurrency=4)
        backend = HttpChatBackend(HttpBackendConfig(**(settings | overrides)))
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def ask(text: str, **kwargs) -> ChatRequest:
    return ChatRequest(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
                       **kwargs)


def echo(result) -> str:
    return json.loads(result.text)["echo"]


def test_429_twice_then_success(server, make_backend):
    [result] = make_backend().chat([ask("hello [[fail:429x2]]")])
    assert (result.error, echo(result), result.attempts, result.cached) == (None, "hello", 3, False)
    assert server.calls["hello [[fail:429x2]]"] == 3


def test_retry_after_is_honoured_and_capped_at_backoff_max(server, make_backend):
    backend = make_backend(backoff_max_s=1.0)
    [result] = backend.chat([ask("wait [[fail:429x1]][[retry-after:0.3]]")])
    first, second = server.call_times["wait [[fail:429x1]][[retry-after:0.3]]"]
    assert result.attempts == 2 and second - first >= 0.3
    # A server asking for 30 s is waited for at most backoff_max_s.
    started = time.monotonic()
    [capped] = make_backend(backoff_max_s=0.05).chat([ask("long [[fail:503x1]][[retry-after:30]]")])
    assert capped.attempts == 2 and time.monotonic() - started < 2


def test_500_once_is_retried_and_client_errors_are_not(server, make_backend):
    ok, bad, auth = make_backend().chat([ask("a [[fail:500x1]]"), ask("b [[status:400]]"), ask("c [[status:401]]")])
    assert (ok.error, ok.attempts) == (None, 2)
    assert (bad.text, bad.error, bad.attempts) == (None, "bad_request_400", 1)
    assert (auth.error, auth.attempts) == ("auth_error_401", 1)
    assert server.calls["b [[status:400]]"] == 1 and server.calls["c [[status:401]]"] == 1


def test_retries_exhausted_keep_the_last_error(server, make_backend):
    [result] = make_backend(max_retries=2).chat([ask("down [[status:503]]")])
    assert (result.error, result.attempts, server.calls["down [[status:503]]"]) == ("server_error_503", 3, 3)


def test_timeout_on_every_attempt_is_bounded(server, make_backend):
    started = time.monotonic()
    [result] = make_backend(timeout_s=0.2, max_retries=2).chat([ask("slow [[sleep:5]]")])
    elapsed = time.monotonic() - started
    assert (result.text, result.error, result.attempts) == (None, "timeout", 3)
    assert server.calls["slow [[sleep:5]]"] == 3
    assert elapsed < 2.5  # 3 x 0.2 s plus tiny backoffs, not 3 x 5 s


def test_connection_refused_is_a_connection_error(make_backend):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    [result] = make_backend(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1).chat([ask("anyone?")])
    assert (result.error, result.attempts) == ("connection_error", 2)


@pytest.mark.parametrize("directive", ["truncate", "cut", "malformed"])
def test_bad_bodies_are_retried_once_then_recorded(server, make_backend, directive):
    prompt = f"x [[{directive}]]"
    [result] = make_backend(max_retries=5).chat([ask(prompt)])
    assert (result.text, result.error, result.attempts, server.calls[prompt]) == (None, "malformed_response", 2, 2)


def test_a_single_truncated_body_recovers(server, make_backend):
    [result] = make_backend().chat([ask("y [[truncatex1]]")])
    assert (echo(result), result.attempts) == ("y", 2)


def test_json_mode_is_requested_but_content_is_passed_through(server, make_backend):
    [result] = make_backend().chat([ask("z [[raw]]", json_mode=True, max_tokens=64, temperature=0.5)])
    assert (result.text, result.error) == ("not json {", None)
    body = server.bodies[-1]
    assert body["response_format"] == {"type": "json_object"}
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("fake-model", 64, 0.5)


def test_mixed_batch_keeps_order_and_the_concurrency_cap(server, make_backend):
    prompts = []
    for i in range(20):
        extra = {0: "[[status:400]]", 5: "[[fail:500x1]]", 11: "[[fail:429x1]]"}.get(i, "")
        prompts.append(f"item {i} [[sleep:0.05]]{extra}")
    results = make_backend(max_concurrency=3).chat([ask(p) for p in prompts])
    assert [r.error for r in results] == ["bad_request_400"] + [None] * 19
    assert [echo(r) for r in results[1:]] == [f"item {i}" for i in range(1, 20)]
    assert [r.attempts for r in results[4:7]] == [1, 2, 1]
    assert 2 <= server.max_in_flight <= 3
    assert server.total_calls == 22


def test_rerun_is_served_from_the_cache(server, make_backend, tmp_path):
    prompts = [ask(f"cached {i}", tag="annotate") for i in range(5)]
    first = make_backend(cache_dir=str(tmp_path)).chat(prompts)
    assert server.total_calls == 5 and not any(r.cached for r in first)
    again = make_backend(cache_dir=str(tmp_path)).chat(prompts)
    assert server.total_calls == 5  # zero calls the second time
    assert [r.text for r in again] == [r.text for r in first]
    assert all(r.cached and r.attempts == 0 for r in again)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 5 and all(p.parent.name == p.name[:2] and p.suffix == ".json" for p in files)


def test_failures_are_not_cached(server, make_backend, tmp_path):
    flaky = ask("flaky [[fail:400x1]]")
    [failed] = make_backend(cache_dir=str(tmp_path)).chat([flaky])
    assert failed.error == "bad_request_400" and not list(tmp_path.rglob("*.json"))
    [retried] = make_backend(cache_dir=str(tmp_path)).chat([flaky])
    assert (retried.error, retried.cached, server.calls["flaky [[fail:400x1]]"]) == (None, False, 2)
    [hit] = make_backend(cache_dir=str(tmp_path)).chat([flaky])
    assert hit.cached and server.calls["flaky [[fail:400x1]]"] == 2


def test_usage_and_cost_worked_by_hand(server, make_backend, tmp_path):
    backend = make_backend(usd_per_1k_prompt=0.01, usd_per_1k_completion=0.03, cache_dir=str(tmp_path))
    backend.chat([ask("a [[usage:1000,200]]", tag="annotate"), ask("b [[usage:500,100]]", tag="annotate"),
                  ask("c [[usage:2000,0]]", tag="judge"), ask("d [[status:400]]", tag="judge")])
    backend.chat([ask("a [[usage:1000,200]]", tag="annotate")])  # a cache hit: counted, not paid
    usage = backend.usage()
    annotate, judge = usage["tags"]["annotate"], usage["tags"]["judge"]
    assert (annotate["requests"], annotate["cache_hits"], annotate["http_calls"]) == (3, 1, 2)
    assert (annotate["prompt_tokens"], annotate["completion_tokens"]) == (1500, 300)
    # 1500/1000 * 0.01 + 300/1000 * 0.03 = 0.015 + 0.009
    assert annotate["usd"] == pytest.approx(0.024)
    assert (judge["prompt_tokens"], judge["failures"]) == (2000, {"bad_request_400": 1})
    assert judge["usd"] == pytest.approx(0.02)  # 2000/1000 * 0.01
    assert usage["total"]["usd"] == pytest.approx(0.044)
    assert usage["total"]["requests"] == 5


def test_key_goes_only_into_the_authorization_header(server, make_backend, tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("FAKE_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    backend = make_backend(api_key_env="FAKE_API_KEY", cache_dir=str(tmp_path))
    backend.chat([ask("ok", tag="t"), ask("no [[status:400]]", tag="t"), ask("re [[fail:429x1]]", tag="t")])
    backend.log_usage()
    assert set(server.auth_headers) == {f"Bearer {secret}"}
    cache_text = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert cache_text and secret not in cache_text
    assert secret not in json.dumps(backend.usage())
    assert "usage fake-model" in caplog.text and secret not in caplog.text
    assert secret not in repr(backend.config) and secret not in backend.config.model_dump_json()


def test_missing_key_is_a_config_error_and_no_key_sends_no_header(server, make_backend, monkeypatch):
    monkeypatch.delenv("FAKE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="FAKE_API_KEY"):
        make_backend(api_key_env="FAKE_API_KEY")
    make_backend(api_key_env="").chat([ask("open")])
    assert server.auth_headers == [None]


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "http.yaml"
    path.write_text("base_url: api.example.com/v1\nmodel: m\nmax_concurrency: 0\nrequests_per_s: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(HttpBackendConfig, path)
    assert all(field in str(err.value) for field in ("base_url", "max_concurrency", "requests_per_s"))
    assert HttpBackendConfig(base_url="http://h:1/v1/", model="m").base_url == "http://h:1/v1"


def _media_request(payload: bytes, media_key: str | None, temperature: float = 0.0) -> ChatRequest:
    b64 = base64.b64encode(payload).decode()
    content = [{"type": "text", "text": "describe"},
               {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}},
               {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}]
    return ChatRequest(messages=[{"role": "user", "content": content}], media_key=media_key, temperature=temperature)


def test_request_key_is_stable_and_sensitive_to_what_is_asked():
    base = request_key("m", _media_request(b"jpeg-1", "clip-a"))
    assert base == request_key("m", _media_request(b"jpeg-1", "clip-a"))
    assert len(base) == 64
    # The same media encoded twice (different bytes, e.g. another JPEG encoder run) share a key via media_key.
    assert request_key("m", _media_request(b"jpeg-2", "clip-a")) == base
    assert request_key("m", _media_request(b"jpeg-1", "clip-b")) != base
    assert request_key("m", _media_request(b"jpeg-1", "clip-a", temperature=0.7)) != base
    assert request_key("other", _media_request(b"jpeg-1", "clip-a")) != base
    # Without a media_key the payloads themselves are hashed.
    assert request_key("m", _media_request(b"jpeg-1", None)) != request_key("m", _media_request(b"jpeg-2", None))
    assert request_key("m", ask("x", temperature=0)) == request_key("m", ask("x", temperature=0.0))
    assert request_key("m", ask("x")) != request_key("m", ask("y"))
    assert request_key("m", ask("x", json_mode=True)) != request_key("m", ask("x"))
    assert request_key("m", ask("x", tag="judge")) == request_key("m", ask("x", tag="annotate"))


def test_response_cache_round_trip_local_and_remote(tmp_path):
    key = "ab" + "0" * 62
    for uri in (str(tmp_path / "cache"), "memory://saber-test-cache"):
        cache = ResponseCache(uri)
        assert cache.get(key) is None
        cache.put(key, {"text": "héllo", "prompt_tokens": 3})
        assert cache.get(key) == {"text": "héllo", "prompt_tokens": 3}
    assert [p.name for p in (tmp_path / "cache" / "ab").iterdir()] == [f"{key}.json"]  # no temporaries left
    with pytest.raises(ValueError, match="alphanumeric"):
        ResponseCache(str(tmp_path)).get("../etc")
    fsspec.filesystem("memory").rm("saber-test-cache", recursive=True)  # the memory filesystem is process-wide


def test_unreadable_cache_entry_is_a_miss(tmp_path):
    key = "cd" + "1" * 62
    cache = ResponseCache(str(tmp_path))
    Path(cache.path(key)).parent.mkdir(parents=True)
    Path(cache.path(key)).write_text("{not json")
    assert cache.get(key) is None


def test_identical_requests_of_one_batch_are_paid_once(server, make_backend):
    """Two clips asking the very same question in one batch: one HTTP call, both get its answer, and the
    usage log counts the second as a cache hit (no tokens)."""
    backend = make_backend()
    results = backend.chat([ask("same"), ask("other"), ask("same")])
    assert [echo(r) for r in results] == ["same", "other", "same"]
    assert (server.calls["same"], server.calls["other"]) == (1, 1)
    assert [(r.cached, r.attempts) for r in results] == [(False, 1), (False, 1), (True, 0)]
    usage = backend.usage()["total"]
    assert (usage["requests"], usage["cache_hits"], usage["http_calls"]) == (3, 1, 2)


def test_a_request_waiting_out_a_backoff_frees_its_slot(server, make_backend):
    """One slot: `a` is throttled and told to wait 1 s; `b` goes out during that wait, not after `a` is done."""
    a = "a [[fail:429x1]][[retry-after:1]]"
    results = make_backend(max_concurrency=1, backoff_max_s=1.0).chat([ask(a), ask("b")])
    assert [r.attempts for r in results] == [2, 1] and server.max_in_flight == 1
    first_a, second_a = server.call_times[a]
    assert first_a < server.call_times["b"][0] < second_a


def test_every_attempt_is_paced(server, make_backend):
    """requests_per_s paces each HTTP call, retries included: 2 requests, one retried once -> 3 waits."""
    backend = make_backend(requests_per_s=1000.0)
    waits = []
    backend._pacer.wait = lambda: waits.append(1) or 0.0
    backend.chat([ask("x [[fail:503x1]]"), ask("y")])
    assert len(waits) == 3 == server.total_calls
    assert make_backend()._pacer is None  # no requests_per_s: no pacing
