"""build_saber with a decoder that really crashes (SIGSEGV) on one clip and hangs on another: both are rejected
with their reasons, every other clip gets its planted verdict, the job exits 0."""

import json
from pathlib import Path

import pytest

from engine.writer import read_clip_table
from tests.jobs.helpers import run_build

pytestmark = pytest.mark.slow

DECODER = "tests.engine.test_media_isolation.faulty_decode"


def _link(src: Path, folder: Path, name: str) -> None:
    for suffix in (".mp4", ".json"):
        if src.with_suffix(suffix).exists():
            (folder / name).with_suffix(suffix).symlink_to(src.with_suffix(suffix))


def test_a_segfault_and_a_hang_in_decode_cost_their_clips_only(small_set, tmp_path):
    folder, clips = small_set
    by_kind = {}
    for clip in clips:
        by_kind.setdefault(clip.kind, []).append(clip)
    inputs = tmp_path / "in"
    inputs.mkdir()
    # Planted clips whose verdicts come from each stage (kept, probe, decode, asr) ...
    expected = {}
    for clip in (*by_kind["good"][:2], by_kind["wrong_transcript"][0], by_kind["truncated_faststart"][0],
                 by_kind["truncated"][0]):
        _link(folder / clip.name, inputs, clip.name)
        expected[clip.name] = (clip.expected_stage, clip.expected_reason)
    # ... and two good clips that the decoder crashes on and hangs on.
    _link(folder / by_kind["good"][2].name, inputs, "crash_me.mp4")
    _link(folder / by_kind["good"][3].name, inputs, "hang_me.mp4")
    expected |= {"crash_me.mp4": ("decode", "decode_crashed"), "hang_me.mp4": ("decode", "decode_timeout")}

    out = tmp_path / "out"
    done = run_build("--input", str(inputs), "--output", str(out), f"media.decoder={DECODER}",
                     "media.decode_timeout_s=3", "block_rows=4")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {Path(r["source_uri"]).name: r for r in read_clip_table(str(out)).to_pylist()}
    assert {name: (r["reject_stage"], r["reject_reason"]) for name, r in rows.items()} == expected
    assert "killed by SIGSEGV, attempt 2 of 2" in rows["crash_me.mp4"]["reject_detail"]
    assert "still busy after 3 s, killed, attempt 2 of 2" in rows["hang_me.mp4"]["reject_detail"]
    for name in ("crash_me.mp4", "hang_me.mp4"):  # each tried twice, each time in a fresh child
        pids = (inputs / f"{name}.calls").read_text().split()
        assert len(pids) == len(set(pids)) == 2, (name, pids)
    report = json.loads((out / "report.json").read_text())
    assert (report["input"], report["kept"]) == (7, 2)
    assert report["rejected_by_reason"]["decode/decode_crashed"] == 1
    assert report["rejected_by_reason"]["decode/decode_timeout"] == 1
