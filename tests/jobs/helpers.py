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
