"""Acceptance: every export, preferences included, loads in ms-swift's and LLaMA-Factory's own dataset loaders.

The frameworks pin transformers versions of their own, so they live in separate venvs, never the project's:
    python -m venv /work/venvs/swift && /work/venvs/swift/bin/pip install ms-swift
    python -m venv /work/venvs/lf && /work/venvs/lf/bin/pip install llamafactory
(or point SABER_MS_SWIFT_PYTHON / SABER_LLAMAFACTORY_PYTHON at their interpreters). Without them the test skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from engine.dataset import exports
from tests.engine.export_fixtures import media_files, pair_row, sed_row

HERE = Path(__file__).resolve().parent
PYTHONS = {"ms_swift": os.environ.get("SABER_MS_SWIFT_PYTHON", "/work/venvs/swift/bin/python"),
           "llama_factory": os.environ.get("SABER_LLAMAFACTORY_PYTHON", "/work/venvs/lf/bin/python")}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """3 SED training rows, 1 test row, an empty split, 6 preference pairs; media as local files."""
    root = tmp_path_factory.mktemp("exports")
    media = media_files(root / "media")
    clips = list(media)
    datasets = {"saber_train": [sed_row(c, media[c]) for c in clips[:3]],
                "saber_test": [sed_row(clips[3], media[clips[3]])],
                "saber_empty": [],
                "saber_preferences": [pair_row(c, media[c], i) for c in clips[:3] for i in (0, 1)]}
    exports.write_exports(str(root / "out"), datasets, frozenset({"saber_preferences"}))
    return root / "out"


def _load(framework: str, export_dir: Path) -> dict:
    python = PYTHONS[framework]
    if not Path(python).exists():
        pytest.skip(f"{framework}: no interpreter at {python} (install it in a venv of its own, see module docstring)")
    done = subprocess.run([python, str(HERE / "export_loaders.py"), framework, str(export_dir)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_ms_swift_loads_every_export(export_dir):
    result = _load("ms_swift", export_dir)
    assert {name: r["rows"] for name, r in result.items()} == {
        "saber_train": 3, "saber_test": 1, "saber_preferences": 6}
    assert result["saber_preferences"]["rejected_response"]
    assert not result["saber_train"]["rejected_response"]
    for r in result.values():
        assert r["roles"] == ["system", "user", "assistant"] and r["videos"] and r["audios"]


def test_llama_factory_loads_every_export(export_dir):
    result = _load("llama_factory", export_dir)
    assert {name: r["rows"] for name, r in result.items()} == {
        "saber_train": 3, "saber_test": 1, "saber_preferences": 6}
    assert all(r["usable"] == r["rows"] for r in result.values())  # no row aligned as broken (empty response)
    assert result["saber_preferences"]["responses"] == 2  # chosen, rejected
    assert result["saber_train"]["responses"] == 1
    for r in result.values():
        assert r["system"] and r["prompt_turns"] == 1 and r["videos"] and r["audios"]
