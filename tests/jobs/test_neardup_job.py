"""build_saber with near-duplicates on: two corpora sharing footage (copies made by ffmpeg from tests/engine's
generated near-duplicate set), a relation judge behind a loopback OpenAI-compatible server. Checks the verdicts in
clips/, report.json, and that SABER-Test holds a duplicate group out like one recording - numbers worked out by hand."""

import json

import pyarrow.parquet as pq
import pytest

from engine.core.schema import clip_id_for
from engine.dataset.writer import read_clip_table
from engine.devkit.fake_openai import FakeOpenAI
from tests.engine import neardup_set
from tests.jobs.helpers import run_build, split_config

pytestmark = pytest.mark.slow

# (file, corpus, recording). Corpus B holds copies of three of corpus A's clips, each next to a clip of its own in
# some recording: other0 shares recording B0 with the copy of base0.
CLIPS = [("base0.mp4", "A", "A0"), ("base1.mp4", "A", "A0"), ("base2.mp4", "A", "A1"), ("base3.mp4", "A", "A2"),
         ("base0_half_size_mpeg4.avi", "B", "B0"), ("other0.mp4", "B", "B0"), ("base2_crop10.mp4", "B", "B1"),
         ("base3_trim_start.mkv", "B", "B2"), ("other1.mp4", "B", "B3")]
# All consistent; the judge's intensity per clip (found by its speech content, which is its file name).
INTENSITY = {"other0.mp4": 10, "base1.mp4": 9, "base2.mp4": 8, "other1.mp4": 7, "base3.mp4": 2, "base0.mp4": 1,
             "base0_half_size_mpeg4.avi": 6, "base2_crop10.mp4": 6, "base3_trim_start.mkv": 6}
ANNOTATION = {"video_desc": "A drawn face speaks.", "audio_desc": {"acoustic_feat": "Flat."},
              "facial_exp_desc": "Calm.", "body_lang_desc": "Still.", "sentiment_analysis": "Neutral."}


def _judge(body, prompt):
    first = body["messages"][0]["content"]
    name = next(n for n in INTENSITY if f"Speech content: {n}\n" in first + "\n")
    return {"content": json.dumps({"relation": "consistent", "intensity": INTENSITY[name], "reason": name})}


def test_duplicates_rejected_in_clips_and_groups_held_out_together(tmp_path):
    folder = neardup_set.CACHE
    neardup_set.generate(folder)
    lines = []
    for name, corpus, recording in CLIPS:
        annotation = {**ANNOTATION, "audio_desc": {**ANNOTATION["audio_desc"], "speech_content": name}}
        lines.append(json.dumps({"uri": str(folder / name), "dataset": corpus, "lang": "en",
                                 "source_video": f"rec{recording}", "annotation": annotation}))
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with FakeOpenAI(responder=_judge) as server:
        result = run_build("--config", str(split_config(tmp_path, server.url)), "--input", str(manifest),
                           "--output", str(out), "neardup.enabled=true", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]

    uri = {clip_id_for(str(folder / name)): name for name, _, _ in CLIPS}
    rows = {uri[r["clip_id"]]: r for r in read_clip_table(str(out)).to_pylist()}
    assert all(r["frame_hashes"] and r["audio_fingerprint"] for r in rows.values())
    # Each copy loses to its original: fewer pixels (half size, crop) or shorter (trimmed).
    rejected = {n: uri[r["duplicate_of"]] for n, r in rows.items() if r["status"] == "rejected"}
    assert rejected == {"base0_half_size_mpeg4.avi": "base0.mp4", "base2_crop10.mp4": "base2.mp4",
                        "base3_trim_start.mkv": "base3.mp4"}
    assert {(r["reject_stage"], r["reject_reason"], r["failure"]) for n, r in rows.items() if n in rejected} == {
        ("neardup", "near_duplicate", "final")}

    report = json.loads((out / "report.json").read_text())
    assert report["rejected_by_reason"] == {"neardup/near_duplicate": 3}
    assert report["funnel"][-1] == {"stage": "neardup", "remaining": 6, "rejected": 3}
    near = report["near_duplicates"]
    assert (near["compared"], near["groups"], near["groups_across_corpora"], near["rejected"]) == (9, 3, 3, 3)
    # Recordings merged: B0 into A0 (base0's copy), B1 into A1, B2 into A2. Consistent top 2, one per group: other0
    # (10, group A0+B0), base1 (9) shares that group, so base2 (8, A1+B1). Training: what no test group holds - base3
    # (A2+B2) and other1 (B3); base0 and base1 (A0) leave it with other0, whose recording holds base0's copy.
    test = [uri[r["clip_id"]] for r in pq.read_table(out / "saber_test").to_pylist()]
    train = sorted(uri[r["clip_id"]] for r in pq.read_table(out / "sed").to_pylist())
    assert test == ["other0.mp4", "base2.mp4"] and train == ["base3.mp4", "other1.mp4"]
    assert report["splits"]["near_duplicates"] == {"linked_recordings": 4, "groups_in_test": 2, "groups_in_train": 1,
                                                   "shared": 0}
