"""A tiny Omni thinker built once per session, and SED records made from generated clips."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from engine.core.schema import clip_id_for
from engine.core.sed import SED_SCHEMA, sed_record
from engine.devkit.tiny_models import build_tiny_omni
from engine.models.annotation import parse_annotation
from tests.conftest import CACHE


@pytest.fixture(scope="session")
def tiny_omni() -> Path:
    return build_tiny_omni(CACHE / "tiny_omni")


@pytest.fixture(scope="session")
def sed_records(asr_set, tmp_path_factory) -> Path:
    """SED records for the correctly transcribed clips of the ASR set, as build_saber writes them."""
    folder, clips = asr_set
    rows = []
    for clip in clips:
        if clip.kind != "good":
            continue
        uri = str(folder / clip.name)
        fields = parse_annotation((folder / clip.name).with_suffix(".json").read_text())
        rows.append(sed_record({"clip_id": clip_id_for(uri), "source_uri": uri, "lang": "en", **fields}))
    out = tmp_path_factory.mktemp("sed") / "sed"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SED_SCHEMA), out / "part-00000.parquet")
    return out


@dataclass
class ReallocationSpy:
    calls: int = 0  # reallocate() calls: one per layer per forward while AR is on
    changed: int = 0  # calls that moved some attention weight


@pytest.fixture
def reallocation_spy(monkeypatch) -> ReallocationSpy:
    """Counts attention reallocation's work: a flag that switches AR on but leaves it idle shows as 0 changes."""
    from train.mosear import realloc

    spy, original = ReallocationSpy(), realloc.reallocate

    def spying(weights, audio_mask, visual_mask, tau=1.0):
        out = original(weights, audio_mask, visual_mask, tau)
        spy.calls += 1
        spy.changed += int(not torch.equal(out, weights))
        return out

    monkeypatch.setattr(realloc, "reallocate", spying)
    return spy
