"""API keys: read from a file by the backend in the process that calls the API, and never written anywhere else.

(a) a build through the loopback fake API leaves no key byte in any output file, in the job's output or in Ray's
session logs, and no process environment holds a key while the API stages run: the fault-API job in
tests/jobs/test_model_stages_job.py, which runs such a build anyway; (b) DEBUG logging of backend
construction and calls carries no key; (d) the config refuses a key without echoing it, so dump_config cannot
include one. (c), the job package and the launchers' runtime_env, is in tests/cluster/test_runtime_env.py.
The AWS side writes what the backend reads: cluster/aws/fetch_secrets.py's folder is read back here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
from pathlib import Path

import pytest
import yaml

from engine.core.config import ConfigError, EngineConfig, dump_config, load_config
from engine.devkit.fake_openai import FakeOpenAI
from engine.models.backends.base import ChatRequest
from engine.models.backends.http import KEY_DIR_ENV, HttpBackendConfig, HttpChatBackend, load_api_key

REPO = Path(__file__).resolve().parents[2]
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def new_key() -> str:
    return f"sk-test-{secrets.token_hex(20)}"


def key_folder(root: Path, **keys: str) -> Path:
    """The layout both clusters give a node: one file per key name holding only the key."""
    folder = root / "api-keys"
    folder.mkdir(mode=0o700)
    for name, key in keys.items():
        (folder / name).write_text(key + "\n")
        (folder / name).chmod(0o600)
    return folder


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*PROXY_VARS, KEY_DIR_ENV, "GEMINI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def server(clean_env):
    with FakeOpenAI() as fake:
        yield fake


def http_config(url: str, **overrides) -> HttpBackendConfig:
    settings = dict(base_url=url, model="fake-model", api_key_env="GEMINI_API_KEY", max_retries=1, timeout_s=5.0,
                    backoff_base_s=0.001, backoff_max_s=0.01, max_concurrency=2)
    return HttpBackendConfig(**(settings | overrides))


def ask(text: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], tag="t")


# -- where the key comes from ---------------------------------------------------------------------------------
def test_key_from_the_node_folder_goes_only_into_the_header_and_never_into_the_environment(server, clean_env,
                                                                                          tmp_path):
    key = new_key()
    clean_env.setenv(KEY_DIR_ENV, str(key_folder(tmp_path, GEMINI_API_KEY=key)))
    environment = dict(os.environ)
    with HttpChatBackend(http_config(server.url)) as backend:
        [result] = backend.chat([ask("hello")])
    assert result.ok and server.auth_headers == [f"Bearer {key}"]
    assert dict(os.environ) == environment  # the key was not exported for anyone else to inherit


def test_resolution_order_file_then_node_folder_then_environment(clean_env, tmp_path):
    in_file, in_folder, in_env = new_key(), new_key(), new_key()
    key_file = tmp_path / "gemini.key"
    key_file.write_text(f"  {in_file}\n")
    folder = key_folder(tmp_path, GEMINI_API_KEY=in_folder)
    clean_env.setenv("GEMINI_API_KEY", in_env)
    clean_env.setenv(KEY_DIR_ENV, str(folder))
    url = "http://127.0.0.1:9/v1"
    assert load_api_key(http_config(url, api_key_file=str(key_file))) == (in_file, f"file {key_file}")
    assert load_api_key(http_config(url)) == (in_folder, f"file {folder / 'GEMINI_API_KEY'}")
    # A key the folder does not hold comes from the environment (a laptop with the folder variable set).
    clean_env.setenv("OPENAI_API_KEY", in_env)
    assert load_api_key(http_config(url, api_key_env="OPENAI_API_KEY")) == (in_env,
                                                                            "environment variable OPENAI_API_KEY")
    clean_env.delenv(KEY_DIR_ENV)
    assert load_api_key(http_config(url)) == (in_env, "environment variable GEMINI_API_KEY")
    assert load_api_key(http_config(url, api_key_env=""))[0] is None


def test_missing_empty_and_unreadable_key_files_are_config_errors_that_name_the_path(clean_env, tmp_path):
    url = "http://127.0.0.1:9/v1"
    folder = key_folder(tmp_path)
    clean_env.setenv(KEY_DIR_ENV, str(folder))
    with pytest.raises(ValueError, match=f"no file {folder / 'GEMINI_API_KEY'}.*GEMINI_API_KEY is not set"):
        HttpChatBackend(http_config(url))
    with pytest.raises(ValueError, match="api_key_file: cannot read the API key file .*missing.key"):
        HttpChatBackend(http_config(url, api_key_file=str(tmp_path / "missing.key")))
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        HttpChatBackend(http_config(url, api_key_file=str(tmp_path / "empty.key")))
    if os.geteuid() != 0:  # root reads any file
        locked = tmp_path / "locked.key"
        locked.write_text(new_key())
        locked.chmod(0)
        with pytest.raises(ValueError, match="Permission denied"):
            HttpChatBackend(http_config(url, api_key_file=str(locked)))


def test_a_world_readable_key_file_is_warned_about_without_its_content(clean_env, tmp_path, caplog):
    key = new_key()
    path = tmp_path / "gemini.key"
    path.write_text(key)
    path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="engine.models.backends.http")
    load_api_key(http_config("http://127.0.0.1:9/v1", api_key_file=str(path)))
    assert f"API key file {path} is readable by every user" in caplog.text and key not in caplog.text


def _fetch_secrets():
    spec = importlib.util.spec_from_file_location("fetch_secrets", REPO / "cluster" / "aws" / "fetch_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _SecretsManager:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def get_secret_value(self, SecretId: str) -> dict:  # noqa: N803 - boto3's argument name
        return {"SecretString": self.secret}


def test_the_backend_reads_what_each_cluster_puts_on_a_node(server, clean_env, tmp_path):
    """AWS: fetch_secrets.py's folder. Kubernetes: a Secret volume (files are symlinks into a ..data folder and
    hold the value without a newline)."""
    aws_key, k8s_key = new_key(), new_key()
    client = _SecretsManager(json.dumps({"GEMINI_API_KEY": aws_key, "OPENAI_API_KEY": new_key()}))
    assert _fetch_secrets().main(["keys", "--secret-id", "s", "--out", str(tmp_path / "aws")], client) == 0
    volume = tmp_path / "k8s"
    (volume / "..data").mkdir(parents=True)
    (volume / "..data" / "GEMINI_API_KEY").write_text(k8s_key)
    (volume / "GEMINI_API_KEY").symlink_to("..data/GEMINI_API_KEY")
    for folder, key in ((tmp_path / "aws", aws_key), (volume, k8s_key)):
        clean_env.setenv(KEY_DIR_ENV, str(folder))
        with HttpChatBackend(http_config(server.url)) as backend:
            assert backend.chat([ask(f"from {folder.name}")])[0].ok
        assert server.auth_headers[-1] == f"Bearer {key}"


# -- (b) logs -------------------------------------------------------------------------------------------------
def test_debug_logs_of_construction_and_every_kind_of_call_hold_no_key(server, clean_env, tmp_path, caplog, capfd):
    key = new_key()
    clean_env.setenv(KEY_DIR_ENV, str(key_folder(tmp_path, GEMINI_API_KEY=key)))
    caplog.set_level(logging.DEBUG)  # the root logger: urllib3's and requests' debug lines too
    backend = HttpChatBackend(http_config(server.url, max_retries=2, cache_dir=str(tmp_path / "cache")))
    prompts = ["fine", "retried [[fail:429x1]]", "refused [[status:401]]", "down [[fail:500]]", "odd [[malformed]]"]
    results = backend.chat([ask(p) for p in prompts])
    backend.chat([ask("fine")])  # from the cache
    backend.log_usage()
    backend.close()
    with HttpChatBackend(http_config("http://127.0.0.1:9/v1", api_key_file=str(tmp_path / "api-keys" /
                                                                              "GEMINI_API_KEY"))) as dead:
        [unreachable] = dead.chat([ask("nobody listens")])  # connection refused: the failure path logs
    assert [r.error for r in results] == [None, None, "auth_error_401", "server_error_500", "malformed_response"]
    assert unreachable.error == "connection_error"
    assert set(server.auth_headers) == {f"Bearer {key}"}  # the key was in use all along
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "urllib3" in {r.name.split(".")[0] for r in caplog.records}  # DEBUG really reached the HTTP layer
    assert "API key from file" in caplog.text and "failed for good" in caplog.text
    out, err = capfd.readouterr()
    assert key not in logged and key not in out + err
    assert key not in repr(vars(backend)) and key not in json.dumps(backend.usage())
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert cached and key not in cached


# -- (d) config -----------------------------------------------------------------------------------------------
PRODUCTION = REPO / "jobs" / "configs" / "production.yaml"
IO = {"input": "s3://bucket/raw/", "output": "s3://bucket/saber/"}


@pytest.mark.parametrize("override", [
    "annotate.backend.http.api_key={key}",
    "annotate.backend.http.api_key_env={key}",
    "annotate.backend.http.api_key_file={key}",
    "annotate.backend.http.headers={{Authorization: 'Bearer {key}'}}",
    "consistency.judge.backend.http.token={key}",
])
def test_a_key_in_an_override_is_refused_without_being_echoed(override):
    key = new_key()
    with pytest.raises(ConfigError) as caught:
        load_config(EngineConfig, PRODUCTION, [override.format(key=key)], IO)
    assert "not shown" in str(caught.value) and key not in str(caught.value)


def test_a_key_assigned_to_a_loaded_config_is_refused_without_being_echoed():
    config = load_config(EngineConfig, PRODUCTION, [], IO)
    key = new_key()
    with pytest.raises(ValueError) as caught:
        config.annotate.backend.http.api_key_env = key
    assert key not in str(caught.value) and config.annotate.backend.http.api_key_env == "GEMINI_API_KEY"


def test_the_config_dump_holds_names_and_paths_only():
    config = load_config(EngineConfig, PRODUCTION, ["annotate.backend.http.api_key_file=/etc/saber/api-keys/G"], IO)
    http = yaml.safe_load(dump_config(config))["annotate"]["backend"]["http"]
    assert (http["api_key_env"], http["api_key_file"]) == ("GEMINI_API_KEY", "/etc/saber/api-keys/G")
    assert {k for k in http if "key" in k} == {"api_key_env", "api_key_file"}  # no field could hold a key
