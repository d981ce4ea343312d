"""Shared fixtures: a small generated clip set (real ffmpeg/espeak media) and the demo-set expectations."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch

from engine.core import storage
from engine.devkit.demo_data import PlantedClip, generate_demo_set

REPO = Path(__file__).resolve().parents[1]
# Cached across test sessions (like the demo set): generation is deterministic for its parameters.
CACHE = Path(os.environ.get("SABER_TEST_CACHE", REPO / ".cache" / "test_clips"))


@pytest.fixture(scope="session")
def small_set() -> tuple[Path, list[PlantedClip]]:
    """4 correct + 2 wrong transcripts + every planted bad file."""
    out = CACHE / "small"
    return out, generate_demo_set(out, n_good=4, n_wrong=2, seed=7)


@pytest.fixture(scope="session")
def asr_set() -> tuple[Path, list[PlantedClip]]:
    """More speech for the WER check: 16 correct + 8 wrong transcripts, no bad files."""
    out = CACHE / "asr"
    return out, generate_demo_set(out, n_good=16, n_wrong=8, seed=11, with_bad=False)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP's barriers make a tiny
    forward pass ~50x slower (1.1 s instead of 0.02 s) whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Ray Train end-to-end tests share one pytest-xdist worker (make test runs --dist loadgroup): their 2 DeepSpeed
# workers wait on each other in gloo collectives, and two such runs at once on 2 cores were seen to take several
# times as long as the two one after the other.
RAY_TRAIN = pytest.mark.xdist_group("ray_train")


# ---- one local Ray for the run ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_ray() -> int:
    """A 2-CPU local Ray whose metrics agent exports on a free port (returned). PYTHONPATH: actor pools unpickle
    classes defined in test modules.

    No dashboard, but a dashboard port of its own, where nothing listens: without one it advertises 127.0.0.1:8265,
    where the dashboard of another Ray on the machine may answer (a job test's plain ray.init(), another session's).
    Ray Train's placement-group cleaner asks that address whether the run's controller is alive, takes "not found"
    for dead and removes the run's placement group: a healthy worker group dies and the run restarts (seen on this
    machine in 3 of 20 training runs: ~30 s each, and two tests failed, past max_failures or resumed from the wrong
    step)."""
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, dashboard_port=free_port(), _metrics_export_port=port,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    return port


def wait_until_idle(timeout: float = 60) -> None:
    """Every CPU free again: an actor a previous module left behind would otherwise hold a CPU that this
    module's pools wait for, until their timeout."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray still busy after {timeout} s: {ray.available_resources()} of "
                               f"{ray.cluster_resources()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """The run's local Ray: started by the first module that needs it and kept for the rest of the run (a start
    and shutdown cost ~5 s), idle at the start of each module."""
    if not ray.is_initialized():
        start_local_ray()
    wait_until_idle()
    yield


# ---- S3: a moto server on loopback --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server() -> Iterator[dict[str, str]]:
    """A real S3 endpoint on 127.0.0.1 (moto server), one per test session: its endpoint and dummy credentials, as
    environment variables (set by `moto_s3`)."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            fs = storage.filesystem("s3://saber-test")
            deadline = time.monotonic() + 30
            while not _s3_reachable(fs):
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _s3_reachable(fs) -> bool:
    try:
        fs.ls("", refresh=True)
        return True
    except OSError:
        return False


@pytest.fixture
def moto_s3(moto_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The session's S3 server emptied, with one empty bucket `saber-test`; its endpoint and dummy credentials set in
    this process's environment and returned (for subprocesses)."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST"),
                           timeout=30).close()
    for key, value in moto_server.items():
        monkeypatch.setenv(key, value)
    storage.filesystem("s3://saber-test").mkdir("saber-test")
    return moto_server


_ray_on_moto: dict[str, str] = {}  # the node id of the local Ray started with the moto server's environment


@pytest.fixture
def local_ray_on_moto_s3(moto_s3: dict[str, str], local_ray: None) -> dict[str, str]:
    """The run's local Ray with the moto server's endpoint and dummy keys in its environment: restarted with them
    unless it already has them, and left with them (nothing else in the tests reaches for S3, and a restart costs
    ~7 s). Ray processes inherit the environment Ray started with, and every one that touches a run's storage needs
    them: the training workers (checkpoints, metrics.jsonl, the final model) and the Ray Train controller (its
    checkpoint index)."""
    if _ray_on_moto.get(moto_s3["AWS_ENDPOINT_URL"]) != ray.get_runtime_context().get_node_id():
        ray.shutdown()
        start_local_ray()
        _ray_on_moto.clear()
        _ray_on_moto[moto_s3["AWS_ENDPOINT_URL"]] = ray.get_runtime_context().get_node_id()
    return moto_s3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end (slow) tests first: `make test` hands tests (or a whole xdist_group) to 2 workers in this order,
    so the long ones start early and are shared out, and the many short ones fill the gaps at the end instead of
    one long test finishing alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ray.is_initialized():
        ray.shutdown()
