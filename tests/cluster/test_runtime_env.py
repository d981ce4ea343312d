"""What `ray job submit --working-dir .` uploads: built with Ray's own client-side packaging, called exactly as
the job client calls it (ray.dashboard.modules.dashboard_sdk: upload_working_dir_if_needed with an upload
function that zips via create_package), which honours .gitignore/.rayignore and Ray's default excludes.

Measured on this repository (Ray 2.60, November 2026): 0.5-1.0 MB as the code grew, ~180 entries (Ray stores
the files uncompressed). The limit leaves room to grow and still catches any environment, cache or output
directory that slips in (the repository's .venv alone is 7 GB, its .cache and outputs ~10 MB each).
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
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
    assert {"jobs/build_saber.py", "engine/pipeline.py", "jobs/configs/production.yaml"} <= names
    assert size < MAX_PACKAGE_BYTES, f"{size} bytes: something large is no longer ignored"
