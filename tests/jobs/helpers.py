"""Running jobs the way users do: as separate processes, each with its own local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port  # noqa: F401  (re-exported for the job tests)

REPO = Path(__file__).resolve().parents[2]
BUILD = [sys.executable, str(REPO / "jobs" / "build_saber.py"),
         "--config", str(REPO / "jobs" / "configs" / "demo.yaml")]


def job_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def run_build(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*BUILD, *args], capture_output=True, text=True, env=env or job_env(), timeout=timeout,
                          cwd=REPO)


def start_build(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """In its own session, so that a SIGKILL of the group takes down the driver and the Ray it started."""
    return subprocess.Popen([*BUILD, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env or job_env(),
                            cwd=REPO, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def wait_for(predicate, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def split_config(tmp_path: Path, url: str) -> Path:
    """The demo config with ASR off and SABER-Test on, its relation judge at `url` (a loopback fake API): for job
    tests of the splits, where ASR has its own tests."""
    import yaml

    config = yaml.safe_load((REPO / "jobs" / "configs" / "demo.yaml").read_text())
    config["asr"]["enabled"] = False
    http = {"base_url": url, "model": "fake-judge", "api_key_env": "", "timeout_s": 5.0, "max_retries": 1,
            "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_concurrency": 4}
    config["saber_test"] = {"enabled": True, "per_subset": 2,
                            "judge": {"enabled": True, "backend": {"kind": "http", "http": http},
                                      "pool": {"concurrency": [1, 1], "num_cpus": 0.5, "batch_size": 4}}}
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
