"""build_saber with annotate, describe and an LLM consistency judge behind an OpenAI-compatible API: a
loopback server answers with 429s, 500s, truncated bodies and unusable JSON, and for some clips is down
(times out) for the whole first run. The job completes, every failure is a recorded reason, the clips the
outage hit are left retryable (not finished), and the rerun after the outage finishes them, paying for no
answer twice. The API keys come the production way, from files (a node's key folder, a stage's api_key_file), and
no key byte reaches an output file, the job's output, Ray's session logs or any process environment."""

import hashlib
import json
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from engine.dataset.writer import read_clip_table
from engine.devkit.fake_openai import FakeOpenAI
from engine.models.backends.http import KEY_DIR_ENV
from tests.engine.test_secrets import PROXY_VARS, key_folder, new_key
from tests.jobs.helpers import REPO, job_env, run_build

pytestmark = pytest.mark.slow

ANNOTATION = json.dumps({"video_desc": "A drawn face on a plain background talks to the camera.",
                         "audio_desc": {"speech_content": "words", "acoustic_feat": "steady"},
                         "facial_exp_desc": "The mouth moves with the words.", "body_lang_desc": "Still.",
                         "sentiment_analysis": "Neutral."})
# Annotation requests get a class in order of first arrival (each class twice among 12 clips; the same
# request keeps its class on the rerun): what the server does with each.
PLAN = {0: "429 twice, then answers", 1: "500 once, then answers", 2: "times out while the server is down",
        3: "answers unusable JSON, also to the repair", 4: "truncated body once, then answers", 5: "answers"}


class Script:
    """Answers per request; counts calls per request body and per class."""

    def __init__(self, keys: list[str]) -> None:
        self.lock = threading.Lock()
        self.needles = [k.encode() for k in keys]
        self.scan: tuple[list[int], int] | None = None  # on the first call, while an API actor is alive
        self.calls: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()  # 200 answers (what is paid for) per request body
        self.classes: dict[str, int] = {}
        self.kinds = {}
        self.down = True  # class 2's requests hang until the test brings the server back

    def __call__(self, body, prompt):
        messages = body["messages"]
        first_user = json.dumps(messages[0]["content"], sort_keys=True)
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        with self.lock:
            if self.scan is None:
                self.scan = environments_holding(self.needles)
            self.calls[key] += 1
            call = self.calls[key]
            if "six dimensions" in first_user:
                cls = self.classes.setdefault(first_user, len(self.classes) % 6)
        if "six dimensions" in first_user:
            answer = self._annotate(cls, call)
        elif "Describe this video" in first_user:
            answer = {"content": "A cartoon face talks calmly against a plain background."}
        else:
            answer = {"content": '{"score": 7, "reason": "both describe a talking drawn face"}'}
        if "content" in answer and not answer.get("truncate"):
            with self.lock:
                self.answered[key] += 1
                self.kinds[key] = first_user[:60]
        return answer

    def _annotate(self, cls, call):
        if cls == 0 and call <= 2:
            return {"status": 429}
        if cls == 1 and call == 1:
            return {"status": 500}
        if cls == 2 and self.down:
            return {"sleep": 2.5}
        if cls == 3:
            return {"content": "Here you go: {video_desc: broken"}
        if cls == 4 and call == 1:
            return {"content": ANNOTATION, "truncate": True}
        return {"content": ANNOTATION}


def environments_holding(needles: list[bytes]) -> tuple[list[int], int]:
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


def leaks(root: Path, needles: list[bytes]) -> list[str]:
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


def _http(url, cache, **key_source):
    return {"kind": "http", "http": {"base_url": url, "model": "fake-gemini", "timeout_s": 1.0,
                                     "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                                     "max_concurrency": 4, "cache_dir": str(cache), **key_source}}


def _config(tmp_path, url, cache):
    config = yaml.safe_load((REPO / "jobs" / "configs" / "demo.yaml").read_text())
    config["asr"]["enabled"] = False  # the scripted annotations do not transcribe the clips' speech
    # Three API pools and the media tasks on 2 CPUs: logical shares that fit (3 x 0.5 + 0.5), else the last
    # pool's actor would wait forever for a CPU.
    pool = {"concurrency": [1, 1], "num_cpus": 0.5}
    config["resources"]["media_num_cpus"] = 0.5
    # Annotation's key from the node's key folder ($SABER_API_KEY_DIR/GEMINI_API_KEY), the others' from a file.
    config["annotate"] = {"enabled": True, "backend": _http(url, cache, api_key_env="GEMINI_API_KEY"), "pool": pool}
    by_file = _http(url, cache, api_key_env="", api_key_file=str(tmp_path / "openai.key"))
    config["describe"] = {"enabled": True, "backend": by_file, "pool": pool}
    config["consistency"] = {"enabled": True, "method": "judge", "min_judge_score": 5,
                             "judge": {"enabled": True, "backend": by_file, "pool": pool}}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_faulty_api_job_completes_records_reasons_and_an_outage_is_retried_never_paid_twice(asr_set, tmp_path):
    folder, clips = asr_set
    manifest = tmp_path / "clips.jsonl"  # no annotations: every clip goes to the annotator
    good = [c for c in clips if c.kind == "good"][:12]
    manifest.write_text("".join(json.dumps({"uri": str(folder / c.name)}) + "\n" for c in good))
    gemini, openai = new_key(), new_key()
    keys = key_folder(tmp_path, GEMINI_API_KEY=gemini)
    (tmp_path / "openai.key").write_text(openai)
    # Ray's session logs (every worker's stdout/stderr, raylet, GCS) go under this short path (socket path limit).
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    env = {k: v for k, v in job_env(RAY_TMPDIR=str(ray_tmp), **{KEY_DIR_ENV: str(keys)}).items()
           if k not in ("GEMINI_API_KEY", "OPENAI_API_KEY", *PROXY_VARS)}
    script, out = Script([gemini, openai]), tmp_path / "out"
    try:
        with FakeOpenAI(responder=script) as server:
            config = _config(tmp_path, server.url, tmp_path / "cache")
            args = ("--config", str(config), "--input", str(manifest), "--output", str(out))
            first = run_build(*args, env=env, timeout=300)
            assert first.returncode == 0, first.stderr[-3000:]
            classes = Counter(script.classes.values())
            after_first = read_clip_table(str(out)).to_pylist()
            report_first = json.loads((out / "report.json").read_text())
            calls_first = sum(script.calls.values())
            script.calls.clear()
            script.down = False  # the outage is over
            second = run_build(*args, env=env, timeout=300)
            assert second.returncode == 0, second.stderr[-3000:]
            calls_second = dict(script.calls)
        # Keys: both really used, each by its own stages (read from the node folder and from api_key_file), and
        # no byte of either in the outputs, the response cache, the job's output, Ray's logs or an environment.
        needles = [gemini.encode(), openai.encode()]
        assert set(server.auth_headers) == {f"Bearer {gemini}", f"Bearer {openai}"}
        assert leaks(out, needles) == [] and leaks(tmp_path / "cache", needles) == []
        assert not any(n in (run.stdout + run.stderr).encode() for run in (first, second) for n in needles)
        assert any(ray_tmp.rglob("*.log")) and leaks(ray_tmp, needles) == []
        holders, workers = script.scan
        assert workers >= 1 and holders == [], (holders, workers)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert sum(classes.values()) == 12 and set(classes) == set(PLAN)
    # First run: the outage's clips are not finished (no row in clips/), they wait in the attempt ledger.
    assert len(after_first) == 12 - classes[2]
    assert Counter(f"{r['reject_stage']}/{r['reject_reason']}/{r['failure']}" for r in after_first
                   if r["status"] == "rejected") == Counter({"annotate/annotation_invalid/final": classes[3]})
    assert report_first["retry"]["pending"] == classes[2]
    assert report_first["retry"]["pending_by_reason"] == {"annotate/model_error": classes[2]}
    assert report_first["run"]["retryable_failures"] == classes[2]
    # The rerun did only those clips: annotate once (no faults now) and describe once each; their judge request
    # (the same scripted description and annotation text as every other clip's) was answered in the first run,
    # so it comes from the response cache.
    assert sum(calls_second.values()) == 2 * classes[2], (calls_second, classes)
    rows = {Path(r["source_uri"]).name: r for r in read_clip_table(str(out)).to_pylist()}
    assert len(rows) == 12 and len(read_clip_table(str(out))) == 12  # every clip once
    reasons = Counter(f"{r['reject_stage']}/{r['reject_reason']}" for r in rows.values() if r["status"] == "rejected")
    assert reasons == Counter({"annotate/annotation_invalid": classes[3]}), (reasons, classes)
    kept = [r for r in rows.values() if r["status"] == "kept"]
    assert len(kept) == 12 - classes[3]
    assert all(r["consistency_score"] == 7.0 and r["description"] and r["annotation_source"] == "model:fake-gemini"
               for r in kept)
    assert Counter(r["attempts"] for r in rows.values()) == Counter({1: 12 - classes[2], 2: classes[2]})
    assert json.loads((out / "report.json").read_text())["retry"]["pending"] == 0
    # Paid once: every request body that got an answer got exactly one, over both runs (the response cache).
    assert set(script.answered.values()) == {1}, [(script.kinds[k], n) for k, n in script.answered.items() if n > 1]
    print(f"fault job: 12 clips, classes {dict(sorted(classes.items()))}, {calls_first} calls in the first run, "
          f"{sum(calls_second.values())} in the rerun after the outage, kept {len(kept)}, rejected {dict(reasons)}, "
          f"{len(script.answered)} answers each paid once")
