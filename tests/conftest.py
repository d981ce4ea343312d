"""Shared fixtures: a small generated clip set (real ffmpeg/espeak media) and the demo-set expectations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.demo_data import PlantedClip, generate_demo_set

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
