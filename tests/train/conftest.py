"""A tiny Omni thinker built once per session, and SED records made from generated clips."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.annotation import parse_annotation
from engine.schema import clip_id_for
from engine.sed import SED_SCHEMA, sed_record
from engine.tiny_models import build_tiny_omni
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
