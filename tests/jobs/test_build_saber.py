"""build_saber end to end on generated clips: one row per input, planted failures, reruns and resume."""

import json
from collections import Counter
from pathlib import Path

import pytest

from engine.dataset.writer import read_clip_table
from tests.jobs.helpers import kill_group, run_build, start_build, wait_for

pytestmark = pytest.mark.slow


def _by_name(output):
    return {Path(r["source_uri"]).name: r for r in read_clip_table(str(output)).to_pylist()}


def test_bad_config_exits_2_naming_every_field(tmp_path):
    done = run_build("--input", "x", "--output", str(tmp_path), "asr.max_wer=-1", "media.fps=0")
    assert done.returncode == 2
    assert "asr.max_wer" in done.stderr and "media.fps" in done.stderr


# A decoder that really crashes (SIGSEGV) on one clip and hangs on another (tests.engine.test_media_isolation).
FAULTY_DECODER = ["media.decoder=tests.engine.test_media_isolation.faulty_decode", "media.decode_timeout_s=3"]
FAULTS = {"crash_me.mp4": ("decode", "decode_crashed", "killed by SIGSEGV, attempt 2 of 2"),
          "hang_me.mp4": ("decode", "decode_timeout", "still busy after 3 s, killed, attempt 2 of 2")}


def _link_inputs(folder: Path, sets) -> dict[str, object]:
    """Both generated sets (41 clips) under one input folder, as links, plus two good clips renamed so that the
    faulty decoder crashes on one and hangs on the other; name -> planted clip (None for those two)."""
    folder.mkdir()
    expected: dict[str, object] = {}
    for source_folder, clips in sets:
        for clip in clips:
            expected[f"{source_folder.name}_{clip.name}"] = clip
            for suffix in (".mp4", ".json"):
                src = (source_folder / clip.name).with_suffix(suffix)
                if src.exists():
                    (folder / f"{source_folder.name}_{src.name}").symlink_to(src)
    source_folder, clips = sets[-1]
    good = [clip for clip in clips if clip.kind == "good"]
    for name, clip in zip(FAULTS, good, strict=False):
        for suffix in (".mp4", ".json"):
            (folder / name).with_suffix(suffix).symlink_to((source_folder / clip.name).with_suffix(suffix))
        expected[name] = None
    return expected


def _calls(folder: Path) -> dict[str, list[str]]:
    return {name: (folder / f"{name}.calls").read_text().split() for name in FAULTS}


def test_sigkill_midway_then_rerun_gives_every_input_once_with_its_planted_verdict(asr_set, small_set, tmp_path):
    """A build killed (SIGKILL, driver and its Ray) midway, then run again: every input has exactly one row with
    the verdict planted in it, nothing finished before the kill is processed again, and a third run has nothing
    left to do. Its decoder really segfaults on one clip and hangs on another: both are rejected with their reasons
    after two attempts, each in a fresh child process, and every other clip gets its planted verdict."""
    # The 17 clips of the small set alone were seen to finish before the kill landed on a busy machine: both sets.
    folder = tmp_path / "in"
    expected = _link_inputs(folder, (asr_set, small_set))
    total = len(expected)
    out = tmp_path / "out"
    clips_dir = out / "clips"
    proc = start_build("--input", str(folder), "--output", str(out), "block_rows=2", "flush_rows=1", *FAULTY_DECODER,
                       log=tmp_path / "run1.log")
    try:
        assert wait_for(lambda: clips_dir.exists() and len(list(clips_dir.glob("part-*.parquet"))) >= 3, 300)
    finally:
        kill_group(proc)
    before = read_clip_table(str(out))
    finished_before = set(before.column("clip_id").to_pylist())
    assert 0 < len(finished_before) < total, len(finished_before)

    done = run_build("--input", str(folder), "--output", str(out), *FAULTY_DECODER)
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
        if clip is None:
            stage, reason, detail = FAULTS[name]
            assert (row["reject_stage"], row["reject_reason"]) == (stage, reason), name
            assert detail in row["reject_detail"], row["reject_detail"]
        elif clip.expected_stage is None:
            assert row["status"] == "kept", (name, row["reject_reason"], row["reject_detail"])
        else:
            assert (row["reject_stage"], row["reject_reason"]) == (clip.expected_stage, clip.expected_reason), name
    # Each faulty clip: two attempts by the run that finished it, and up to two more by the killed run (whose
    # verdict may not have reached clips/ before the kill), each in a fresh child process.
    calls = _calls(folder)
    for name, pids in calls.items():
        assert 2 <= len(pids) <= 4 and len(set(pids)) == len(pids), (name, pids)
    # The report covers the whole output, both runs' clips.
    planted = [c for c in expected.values() if c is not None]
    assert (report["input"], report["kept"]) == (total, sum(c.expected_stage is None for c in planted))
    assert report["rejected_by_reason"] == dict(Counter(
        [f"{c.expected_stage}/{c.expected_reason}" for c in planted if c.expected_stage]
        + [f"{stage}/{reason}" for stage, reason, _ in FAULTS.values()]))
    assert (out / "report.png").stat().st_size > 10_000 and (out / "config.yaml").exists()

    again = run_build("--input", str(folder), "--output", str(out), *FAULTY_DECODER)
    assert again.returncode == 0, again.stderr[-3000:]
    report3 = json.loads((out / "report.json").read_text())
    assert (report3["run"]["processed"], report3["run"]["skipped_already_done"]) == (0, total)
    assert read_clip_table(str(out)).num_rows == total
    assert _calls(folder) == calls  # a crash or a hang is a verdict: never tried again
    print(f"resume: {total} clips, {len(finished_before)} finished before SIGKILL, "
          f"{len(second_run)} processed after, 0 reprocessed; decoder faults tried {calls}")
