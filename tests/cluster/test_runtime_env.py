"""What `ray job submit --working-dir .` uploads: built with Ray's own client-side packaging, called exactly as
the job client calls it (ray.dashboard.modules.dashboard_sdk: upload_working_dir_if_needed with an upload
function that zips via create_package), which honours .gitignore/.rayignore and Ray's default excludes.

Measured on this repository (Ray 2.60, November 2026): 0.5-1.0 MB as the code grew, ~180 entries (Ray stores
the files uncompressed). The limit leaves room to grow and still catches any environment, cache or output
directory that slips in (the repository's .venv alone is 7 GB, its .cache and outputs ~10 MB each).

Key files left in a checkout stay out of the package (.rayignore), and the runtime_env our launchers and
manifests build carries no key: a job's runtime_env and metadata are stored in the GCS and shown on the dashboard.
"""

from __future__ import annotations

import ast
import importlib.util
import secrets
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from ray._private.runtime_env.packaging import create_package
from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

REPO = Path(__file__).resolve().parents[2]
MAX_PACKAGE_BYTES = 4 * 1024 * 1024
# Top-level or nested directories that must never travel with a job.
NEVER_UPLOADED = {".git", ".venv", "venv", ".cache", "outputs", "results", "__pycache__", ".pytest_cache",
                  ".ruff_cache", "build"}


def job_package(working_dir: Path, scratch: Path) -> Path:
    """The zip the job client would upload for this working_dir."""
    made: list[Path] = []

    def upload(path: str, excludes: list[str], is_file: bool = False) -> None:
        target = scratch / "package.zip"
        create_package(path, target, include_gitignore=True, excludes=excludes)
        made.append(target)

    runtime_env = upload_working_dir_if_needed({"working_dir": str(working_dir)}, include_gitignore=True,
                                               upload_fn=upload)
    assert runtime_env["working_dir"].startswith("gcs://_ray_pkg_") and made
    return made[0]


def entries(package: Path) -> set[str]:
    with zipfile.ZipFile(package) as archive:
        return {name.rstrip("/") for name in archive.namelist()}


def forbidden(names: set[str]) -> set[str]:
    return {n for n in names if set(Path(n).parts) & NEVER_UPLOADED or n.endswith((".pyc", ".egg-info"))}


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return [name for name in listing.stdout.splitlines() if (REPO / name).is_file()]


def plant(root: Path, relative: str, size: int) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)


def test_tracked_files_travel_and_environments_caches_outputs_do_not(tmp_path):
    """A copy of the tracked files plus what a working checkout accumulates (a venv, caches, outputs, bytecode,
    also nested): the package is exactly the tracked files."""
    copy = tmp_path / "repo"
    tracked = tracked_files()
    for name in tracked:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, copy / name)
    for junk in (".venv/lib/python3.11/site-packages/torch/lib.so", "venv/bin/python", ".cache/demo_clips/a.mp4",
                 "outputs/demo/clips/part-0.parquet", "results/run.json", "engine/__pycache__/schema.cpython-311.pyc",
                 ".pytest_cache/v/cache", ".ruff_cache/x", "build/lib/engine.py", "saber_engine.egg-info/PKG-INFO",
                 ".git/objects/pack/pack-1.pack", "train/.venv/bin/python", "jobs/configs/outputs/x.parquet"):
        plant(copy, junk, 3 * 1024 * 1024)
    names = entries(job_package(copy, tmp_path))
    assert forbidden(names) == set()
    assert names == set(tracked)


def test_the_repository_as_it_stands_uploads_small(tmp_path, capsys):
    package = job_package(REPO, tmp_path)
    names = entries(package)
    size = package.stat().st_size
    with capsys.disabled():
        print(f"\nruntime_env working_dir package: {size / 1e6:.2f} MB, {len(names)} entries")
    assert forbidden(names) == set()
    assert {"jobs/build_saber.py", "engine/dataset/pipeline.py", "jobs/configs/production.yaml"} <= names
    assert size < MAX_PACKAGE_BYTES, f"{size} bytes: something large is no longer ignored"


# -- keys -------------------------------------------------------------------------------------------------------
# Where a key file ends up in a checkout: what cluster/OPERATIONS.md's commands read, dotenv files, TLS keys,
# a copy of a node's key folder or Ray token, at the top and nested.
KEY_FILES = ("api-keys.json", "api-keys.env", "api_keys.env", ".env", ".env.local", "jobs/configs/gemini.env",
             "secrets/openai.key", "deploy/tls.pem", ".saber/api-keys/GEMINI_API_KEY", "cluster/aws/auth_token",
             "notes/.ray/auth_token")


def test_key_files_in_the_checkout_never_travel_with_a_job(tmp_path):
    copy = tmp_path / "repo"
    tracked = tracked_files()
    for name in {*tracked, ".rayignore"}:  # .rayignore: also before it is committed
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, copy / name)
    key = f"sk-test-{secrets.token_hex(20)}"
    for name in KEY_FILES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text(f"GEMINI_API_KEY={key}\n")
    package = job_package(copy, tmp_path)
    names = entries(package)
    assert names & set(KEY_FILES) == set()
    assert {"jobs/build_saber.py", ".rayignore"} <= names  # code still travels
    with zipfile.ZipFile(package) as archive:
        assert not any(key.encode() in archive.read(info) for info in archive.infolist() if not info.is_dir())


def test_the_job_runtime_env_is_the_working_dir_only(tmp_path):
    uploaded: list[dict] = []

    def upload(path: str, excludes: list[str], is_file: bool = False) -> None:
        uploaded.append({"path": path, "excludes": excludes})

    runtime_env = upload_working_dir_if_needed({"working_dir": str(REPO)}, include_gitignore=True, upload_fn=upload)
    assert set(runtime_env) == {"working_dir"} and uploaded


def _keyword_calls(path: Path) -> list[tuple[str, int, set[str]]]:
    """(callee, line, keyword names) of every call in a module."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            calls.append((ast.unparse(node.func), node.lineno, {k.arg for k in node.keywords if k.arg}))
    return calls


def test_no_launcher_or_library_hands_ray_a_runtime_env_or_job_metadata():
    """A runtime_env's env_vars and a job's metadata are stored with the job and shown on the dashboard: the
    project sets neither, and connects with ray.init(address=..., ignore_reinit_error=...) only; engine.ops.launch's
    init_ray adds its light options when it starts a local cluster (the ones the call passes through ** are
    checked in tests/engine/test_local_ray.py)."""
    sources = [p for folder in ("jobs", "engine", "train") for p in (REPO / folder).rglob("*.py")]
    assert len(sources) > 20
    found = []
    for path in sources:
        for callee, line, keywords in _keyword_calls(path):
            where = f"{path.relative_to(REPO)}:{line} {callee}"
            if keywords & {"runtime_env", "job_config"} or "metadata" in keywords and "job" in callee.lower():
                found.append(where)
            start = {"include_dashboard", "dashboard_port"} if path == REPO / "engine" / "ops" / "launch.py" else set()
            if callee == "ray.init" and not keywords <= {"address", "ignore_reinit_error"} | start:
                found.append(where)
            if callee.endswith(("JobSubmissionClient", "submit_job", "JobConfig")):
                found.append(where)
    assert found == []


def test_build_saber_connects_to_ray_with_nothing_from_the_environment(monkeypatch):
    """With keys in the launcher's environment (a workstation), what reaches ray.init carries none of them."""
    import ray

    key = f"sk-test-{secrets.token_hex(20)}"
    monkeypatch.setenv("GEMINI_API_KEY", key)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    seen: list[tuple[tuple, dict]] = []

    class Connected(Exception):
        pass

    def fake_init(*args, **kwargs):
        seen.append((args, kwargs))
        raise Connected

    monkeypatch.setattr(ray, "init", fake_init)
    spec = importlib.util.spec_from_file_location("build_saber_job", REPO / "jobs" / "build_saber.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(Connected):
        job.main(["--config", str(REPO / "jobs" / "configs" / "production.yaml"), "--input", "s3://b/raw/",
                  "--output", "s3://b/saber/"])
    [(args, kwargs)] = seen  # a local start here (its light options), or a join where a Ray runs on this machine
    assert args == () and key not in repr(kwargs)
    assert set(kwargs) <= {"address", "ignore_reinit_error", "include_dashboard", "dashboard_port", "_system_config"}


def test_the_rayjob_runtime_env_holds_no_credential():
    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob-build-saber.yaml").read_text())
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= {"working_dir", "env_vars"} and "metadata" not in doc["spec"]
    assert set(runtime_env.get("env_vars", {})) == {"RAY_DATA_DISABLE_PROGRESS_BARS"}
