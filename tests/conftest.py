"""Shared fixtures: a small generated clip set (real ffmpeg/espeak media) and the demo-set expectations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP's barriers make a tiny
    forward pass ~50x slower (1.1 s instead of 0.02 s) whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
