"""The simulated clip table (engine.devkit.scale_sim) and the build's step after the stream run on it."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.core.schema import CLIP_SCHEMA
from engine.dataset.curation import MEDIA_STAGES, read_curation
from engine.dataset.holdout import read_relations
from engine.dataset.writer import read_clip_table
from engine.devkit import scale_sim


def test_the_simulated_table_and_the_step_after_the_stream(tmp_path):
    out = str(tmp_path)
    assert scale_sim.write_table(out, rows=1500, part_rows=400) == {"rows": 1500, "parts": 4, "curation_marks": 4}
    parts = sorted((tmp_path / "clips").iterdir())
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [400, 400, 400, 300]
    assert pq.read_schema(parts[0]).remove_metadata() == CLIP_SCHEMA
    clips = read_clip_table(out)
    annotated = pc.is_valid(clips.column("video_desc"))
    assert pc.min(pc.utf8_length(clips.column("video_desc").filter(annotated))).as_py() > 150
    assert read_relations(out).num_rows == pc.sum(annotated).as_py()  # every annotated clip has a verdict

    # What the step must find, worked out from the written table and the curation file, row by row.
    decisions = read_curation(str(tmp_path / "curation.jsonl"))
    kept = 0
    for row in clips.select(["clip_id", "status", "reject_stage"]).to_pylist():
        action = decisions[row["clip_id"]].action if row["clip_id"] in decisions else None
        if row["status"] == "kept":
            kept += action != "drop"
        else:
            kept += action == "keep" and row["reject_stage"] not in MEDIA_STAGES
    figures = scale_sim.measure(out, per_subset=20)
    report = json.loads((tmp_path / "report.json").read_text())
    assert figures["rows"] == report["input"] == 1500 and figures["kept"] == report["kept"] == kept
    assert report["retry"]["pending"] == figures["pending"] == 4  # one waiting clip a part, none of them finished
    assert figures["peak_rss_mb"] >= figures["rss_before_mb"] > 0 and figures["seconds"] > 0
    assert {"read_light_table", "write_training_splits", "build_report", "write_card"} <= set(figures["phases_s"])
    sed = pq.read_table(tmp_path / "sed" / "part-00000.parquet")
    test = pq.read_table(tmp_path / "saber_test" / "part-00000.parquet")
    chosen = report["splits"]["saber_test"]
    assert sed.num_rows == report["splits"]["sed_train"] > 0
    assert test.num_rows == chosen["consistent"] + chosen["inconsistent"] == 40
    assert not set(sed.column("source_video").to_pylist()) & set(test.column("source_video").to_pylist())
    # The step only selected: the judge was not called (it would have raised) and its stand-in is gone again.
    from engine.dataset import build

    assert build.judge_relations.__name__ == "judge_relations"
    assert isinstance(build.read_light_table(out), pa.Table)
