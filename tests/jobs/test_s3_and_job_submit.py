"""The build through `ray job submit` to a `ray start` head. (The build against S3 - a moto server behind a throttling
proxy - is tests/jobs/test_s3_throttled_job.py.)"""

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

import pytest

from engine.writer import read_clip_table
from tests.jobs.helpers import REPO, free_port, job_env, wait_for

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_ray_job_submit_to_a_local_head(small_set, tmp_path):
    folder, clips = small_set
    out = tmp_path / "out"
    dashboard = free_port()
    # Token authentication on, as on a real cluster: head and client share the token through a file.
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
                  "--working-dir", ".", "--", "python", "jobs/build_saber.py", "--config", "jobs/configs/demo.yaml",
                  "--input", str(folder), "--output", str(out)]
        # The job agent starts after the dashboard answers (seen taking over 2 minutes on a busy 2-core box):
        # retry that one refusal until a deadline.
        deadline = time.monotonic() + 300
        while True:
            done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
            if "No available agent" not in done.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
        assert "succeeded" in done.stdout.lower()
        assert read_clip_table(str(out)).num_rows == len(clips)
    finally:
        # The whole head (gcs, raylet, dashboard, workers) shares the group; `ray start --block` ignores
        # SIGTERM for tens of seconds, and a throwaway test cluster needs no graceful shutdown.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(short, ignore_errors=True)


def _dashboard_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
            return True
    except urllib.error.HTTPError:  # 401 without the token: the dashboard is up and answering
        return True
    except OSError:
        return False
