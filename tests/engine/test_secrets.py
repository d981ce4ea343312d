"""API keys: read from a file by the backend in the process that calls the API, and never written anywhere else.

(a) a build through the loopback fake API leaves no key byte in any output file, in the job's output or in Ray's
session logs, and no process environment holds a key while the API stages run; (b) DEBUG logging of backend
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
import shutil
import tempfile
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from engine.backends.base import ChatRequest
from engine.backends.http import KEY_DIR_ENV, HttpBackendConfig, HttpChatBackend, load_api_key
from engine.config import ConfigError, EngineConfig, dump_config, load_config
from tests.engine.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


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
    for name in (*_PROXY_VARS, KEY_DIR_ENV, "GEMINI_API_KEY", "OPENAI_API_KEY"):
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
    caplog.set_level(logging.WARNING, logger="engine.backends.http")
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


# -- (a) a whole build ----------------------------------------------------------------------------------------
def _environments_holding(needles: list[bytes]) -> tuple[list[int], int]:
    """PIDs whose environment or command line holds a needle, and how many Ray worker processes were read."""
    holders, workers = [], 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ, cmdline = (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()
        except OSError:  # another user's process, or gone
            continue
        workers += b"default_worker.py" in cmdline
        if any(n in environ or n in cmdline for n in needles):
            holders.append(int(entry.name))
    return holders, workers


class _Answers:
    """The fake API's answers; on the first call (an API actor is then alive) it reads every process's
    environment for the keys."""

    def __init__(self, keys: list[str]) -> None:
        self.needles = [k.encode() for k in keys]
        self.lock = threading.Lock()
        self.scan: tuple[list[int], int] | None = None

    def __call__(self, body, prompt):
        with self.lock:
            if self.scan is None:
                self.scan = _environments_holding(self.needles)
        first = json.dumps(body["messages"][0]["content"])
        if "six dimensions" in first:
            return {"content": json.dumps({
                "video_desc": "A drawn face talks.", "audio_desc": {"speech_content": "words", "acoustic_feat": "calm"},
                "facial_exp_desc": "Mouth moves.", "body_lang_desc": "Still.", "sentiment_analysis": "Neutral."})}
        if "Describe this video" in first:
            return {"content": "A cartoon face talks calmly."}
        return {"content": '{"score": 7, "reason": "both describe a talking face"}'}


def _http(url: str, **key_source) -> dict:
    return {"kind": "http", "http": {"base_url": url, "model": "fake", "timeout_s": 5.0, "max_retries": 1,
                                     "backoff_base_s": 0.01, "backoff_max_s": 0.05, **key_source}}


def _leaks(root: Path, needles: list[bytes]) -> list[str]:
    """Every file under root holding a needle: raw bytes, and for Parquet every value and the schema metadata
    (a compressed page need not hold the bytes as written)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        texts = [path.read_bytes()]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts += [json.dumps(table.to_pylist(), default=str).encode(), str(table.schema.metadata).encode()]
        found += [str(path.relative_to(root)) for n in needles if any(n in t for t in texts)]
    return found


@pytest.mark.slow
def test_a_build_through_the_api_leaves_no_key_in_outputs_logs_or_environments(small_set, tmp_path):
    from tests.jobs.helpers import job_env, run_build

    folder, clips = small_set
    gemini, openai = new_key(), new_key()
    keys = key_folder(tmp_path, GEMINI_API_KEY=gemini)
    (tmp_path / "openai.key").write_text(openai)
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"uri": str(folder / c.name)}) + "\n"
                                for c in [c for c in clips if c.kind == "good"][:3]))
    answers = _Answers([gemini, openai])
    # Ray's session logs (every worker's stdout/stderr, raylet, GCS) go under this short path (socket path limit).
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    env = {k: v for k, v in job_env(RAY_TMPDIR=str(ray_tmp), **{KEY_DIR_ENV: str(keys)}).items()
           if k not in ("GEMINI_API_KEY", "OPENAI_API_KEY", *_PROXY_VARS)}
    try:
        with FakeOpenAI(responder=answers) as server:
            config = yaml.safe_load((REPO / "jobs" / "configs" / "demo.yaml").read_text())
            config["asr"]["enabled"] = False
            pool = {"concurrency": [1, 1], "num_cpus": 0.5}
            config["resources"]["media_num_cpus"] = 0.5
            config["annotate"] = {"enabled": True, "backend": _http(server.url, api_key_env="GEMINI_API_KEY"),
                                  "pool": pool}
            by_file = _http(server.url, api_key_env="", api_key_file=str(tmp_path / "openai.key"))
            config["describe"] = {"enabled": True, "backend": by_file, "pool": pool}
            config["consistency"] = {"enabled": True, "method": "judge", "min_judge_score": 5,
                                     "judge": {"enabled": True, "backend": by_file, "pool": pool}}
            (tmp_path / "build.yaml").write_text(yaml.safe_dump(config))
            out = tmp_path / "out"
            done = run_build("--config", str(tmp_path / "build.yaml"), "--input", str(manifest), "--output", str(out),
                             env=env, timeout=400)
            assert done.returncode == 0, done.stderr[-3000:]
        needles = [gemini.encode(), openai.encode()]
        # Both keys were really used, each by its own stages, read from the node folder and from api_key_file.
        assert set(server.auth_headers) == {f"Bearer {gemini}", f"Bearer {openai}"}
        assert (out / "config.yaml").is_file() and (out / "report.json").is_file() and any(out.rglob("*.parquet"))
        assert _leaks(out, needles) == []
        assert not any(n in (done.stdout + done.stderr).encode() for n in needles)
        assert any(ray_tmp.rglob("*.log")) and _leaks(ray_tmp, needles) == []
        holders, workers = answers.scan
        assert workers >= 1 and holders == [], (holders, workers)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
