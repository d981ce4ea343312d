"""build_saber end to end on generated clips: one row per input, planted failures, reruns and resume."""

import json
from collections import Counter
from pathlib import Path

import pytest

from engine.writer import read_clip_table
from tests.jobs.helpers import kill_group, run_build, start_build, wait_for

pytestmark = pytest.mark.slow


def _by_name(output):
    return {Path(r["source_uri"]).name: r for r in read_clip_table(str(output)).to_pylist()}


def test_bad_config_exits_2_naming_every_field(tmp_path):
    done = run_build("--input", "x", "--output", str(tmp_path), "asr.max_wer=-1", "media.fps=0")
    assert done.returncode == 2
    assert "asr.max_wer" in done.stderr and "media.fps" in done.stderr


def test_sigkill_midway_then_rerun_gives_every_input_once_with_its_planted_verdict(asr_set, small_set, tmp_path):
    """A build killed (SIGKILL, driver and its Ray) midway, then run again: every input has exactly one row with
    the verdict planted in it, nothing finished before the kill is processed again, and a third run has nothing
    left to do."""
    # Both generated sets (41 clips) under one input folder, as links: the 17 of the small set alone were seen to
    # finish before the kill landed on a busy machine.
    folder = tmp_path / "in"
    folder.mkdir()
    expected = {}
    for source_folder, clips in (asr_set, small_set):
        for clip in clips:
            expected[f"{source_folder.name}_{clip.name}"] = clip
            for suffix in (".mp4", ".json"):
                src = (source_folder / clip.name).with_suffix(suffix)
                if src.exists():
                    (folder / f"{source_folder.name}_{src.name}").symlink_to(src)
    total = len(expected)
    out = tmp_path / "out"
    clips_dir = out / "clips"
    proc = start_build("--input", str(folder), "--output", str(out), "block_rows=2", "flush_rows=1",
                       log=tmp_path / "run1.log")
    try:
        assert wait_for(lambda: clips_dir.exists() and len(list(clips_dir.glob("part-*.parquet"))) >= 3, 300)
    finally:
        kill_group(proc)
    before = read_clip_table(str(out))
    finished_before = set(before.column("clip_id").to_pylist())
    assert 0 < len(finished_before) < total, len(finished_before)

    done = run_build("--input", str(folder), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray dashboard:" in done.stdout and f"Outputs: {out}" in done.stdout
    table = read_clip_table(str(out))
    ids = table.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == total  # no duplicate, no missing clip
    report = json.loads((out / "report.json").read_text())
    runs = table.column("run_id").to_pylist()
    second_run = [cid for cid, run in zip(ids, runs, strict=True) if run == report["run"]["run_id"]]
    assert not finished_before & set(second_run)  # nothing finished before the kill was processed again
    assert report["run"]["skipped_already_done"] == len(finished_before)
    assert report["run"]["processed"] == total - len(finished_before) and report["run"]["clips_per_s"] > 0

    rows = _by_name(out)
    for name, clip in expected.items():
        row = rows[name]
        if clip.expected_stage is None:
            assert row["status"] == "kept", (name, row["reject_reason"], row["reject_detail"])
        else:
            assert (row["reject_stage"], row["reject_reason"]) == (clip.expected_stage, clip.expected_reason), name
    # The report covers the whole output, both runs' clips.
    assert (report["input"], report["kept"]) == (total, sum(c.expected_stage is None for c in expected.values()))
    assert report["rejected_by_reason"] == dict(Counter(f"{c.expected_stage}/{c.expected_reason}"
                                                        for c in expected.values() if c.expected_stage))
    assert (out / "report.png").stat().st_size > 10_000 and (out / "config.yaml").exists()

    again = run_build("--input", str(folder), "--output", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    report3 = json.loads((out / "report.json").read_text())
    assert (report3["run"]["processed"], report3["run"]["skipped_already_done"]) == (0, total)
    assert read_clip_table(str(out)).num_rows == total
    print(f"resume: {total} clips, {len(finished_before)} finished before SIGKILL, "
          f"{len(second_run)} processed after, 0 reprocessed")
