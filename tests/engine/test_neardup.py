"""Near-duplicates (engine.dataset.neardup, engine.stages.fingerprint): recall and false positives on generated copies,
the index, the verdicts in clips/, and SABER-Test holding a duplicate group out like one recording."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pyarrow as pa
import pytest

from engine.core import fingerprints
from engine.core.config import MediaConfig, NearDupConfig
from engine.core.schema import AUDIO_SAMPLE_RATE, CLIP_SCHEMA, new_row
from engine.dataset import holdout, neardup
from engine.dataset.writer import ClipTableWriter, read_clip_table
from engine.stages.decode import DecodeStage
from engine.stages.fingerprint import FingerprintStage
from engine.stages.noise import covered_audio
from engine.stages.probe import ProbeStage
from tests.engine import neardup_set

ANNOTATION = {"video_desc": "A face.", "speech_content": "Fine.", "acoustic_feat": "Flat.", "facial_exp_desc": "Smile.",
              "body_lang_desc": "Still.", "sentiment_analysis": "Calm."}


@pytest.fixture(scope="module")
def fingerprinted() -> tuple[list[dict], list[neardup_set.SetClip], float]:
    """Every clip of the generated set through probe, decode and the fingerprint stage; the stage's ms per clip."""
    clips = neardup_set.generate()
    media = MediaConfig()
    rows = DecodeStage(media)(ProbeStage(media)([new_row(str(c.path), dataset=f"corpus{i % 3}", **ANNOTATION)
                                                 for i, c in enumerate(clips)]))
    started = time.perf_counter()
    rows = FingerprintStage()(rows)
    ms = (time.perf_counter() - started) * 1000 / len(rows)
    bad = [(r["source_uri"], r["reject_reason"], r["reject_detail"]) for r in rows if r["status"] != "kept"]
    assert not bad
    return rows, clips, ms


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: r[k] for k in CLIP_SCHEMA.names} for r in rows], schema=CLIP_SCHEMA)


def _pair_counts(group_of: dict[str, str], truth: dict[str, str]) -> dict[str, int]:
    counts = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
    for a, b in itertools.combinations(sorted(truth), 2):
        same, found = truth[a] == truth[b], group_of[a] == group_of[b]
        counts[("tp" if found else "fn") if same else ("fp" if found else "tn")] += 1
    return counts


def test_recall_and_false_positives_on_generated_copies(fingerprinted):
    rows, clips, ms = fingerprinted
    found = neardup.find_duplicates(_table(rows), NearDupConfig(enabled=True))
    truth = {r["clip_id"]: c.group for r, c in zip(rows, clips, strict=True)}
    counts = _pair_counts({cid: found.duplicate_of.get(cid, cid) for cid in truth}, truth)
    # 6 bases with 6 copies each (groups of 7: 21 pairs each) and 2 unrelated clips: 44 clips, C(44, 2) = 946 pairs,
    # 6 * 21 = 126 of them duplicates, 820 not.
    assert len(rows) == 44 and counts["tp"] + counts["fn"] == 126 and counts["fp"] + counts["tn"] == 820
    recall, false_positive_rate = counts["tp"] / 126, counts["fp"] / 820
    print(f"\nnear-duplicates: {counts}, recall {recall:.3f}, false positives {false_positive_rate:.4f}, "
          f"fingerprint {ms:.1f} ms/clip, stats {found.stats}")
    assert recall >= 0.95 and false_positive_rate <= 0.01
    # Each group keeps one clip, the base (annotated like all, and with the most pixels and the longest duration...
    # except the upscaled copy, which has more pixels): 6 groups, 36 rejected.
    assert found.stats["groups"] == 6 and found.stats["rejected"] == len(found.duplicate_of) == 36
    kept = {cid for cid in truth if cid not in found.duplicate_of}
    by_id = {r["clip_id"]: r for r in rows}
    assert sorted(by_id[cid]["source_uri"].rsplit("/", 1)[1] for cid in kept) == sorted(
        [f"base{i}_upscaled.mov" for i in range(6)] + ["other0.mp4", "other1.mp4"])
    # The index compared only pairs that share an audio item: far fewer than the 946 of all pairs.
    assert found.stats["candidate_pairs"] < 946 / 4


def test_one_clip_of_each_group_makes_no_group(fingerprinted):
    rows, clips, _ = fingerprinted
    firsts = [r for r, c in zip(rows, clips, strict=True) if c.path.stem in ("base0", "base1", "other0", "other1")]
    found = neardup.find_duplicates(_table(firsts), NearDupConfig(enabled=True))
    assert found.duplicate_of == {} and found.stats["groups"] == 0 and found.stats["compared"] == 4


def test_fingerprint_stage_produces_its_columns(fingerprinted):
    rows, _, _ = fingerprinted
    for row in rows:
        assert len(row["frame_hashes"]) == 8 * min(8, row["n_frames"])
        # ~32.3 items a second: 16 kHz over a hop of 1365 * 4000 / 11025 samples; the last 20 are cut.
        samples = covered_audio(row).size
        assert len(row["audio_fingerprint"]) == 4 * max(0, int(samples / (1365 * 4000 / 11025)) - 20)
    assert set(FingerprintStage.produces) <= set(CLIP_SCHEMA.names)


def test_kept_audio_items_do_not_depend_on_the_padding(fingerprinted):
    """The items the fingerprint keeps saw only the audio: Chromaprint gives the same ones after another padding."""
    import chromaprint

    rows, _, _ = fingerprinted
    rng = np.random.default_rng(0)
    for row in rows[:7]:
        pcm = (np.clip(covered_audio(row), -1, 1) * 32767).astype("<i2")
        noise = (rng.standard_normal(2 * AUDIO_SAMPLE_RATE) * 8000).astype("<i2")
        printer = chromaprint.Fingerprinter()
        printer.start(AUDIO_SAMPLE_RATE // 4, 1)
        printer.feed(np.concatenate([pcm, noise]).tobytes())
        items = np.asarray(chromaprint.decode_fingerprint(printer.finish())[0], np.int64).astype("<u4")
        kept = np.frombuffer(row["audio_fingerprint"], "<u4")
        assert kept.size > 50 and np.array_equal(items[:kept.size], kept)


def test_index_pairs_only_clips_that_share_an_item():
    prints = [np.array(items, "<u4").tobytes() for items in ([1, 2, 3, 3], [3, 4], [5], [2, 9], [7, 9], [7], [7])]
    pairs, crowded = neardup.candidate_pairs(prints, max_bucket=2)
    # 2: clips 0, 3. 3: clips 0, 1 (clip 0 twice counts once). 9: clips 3, 4. 7: clips 4, 5, 6 - more than 2, skipped.
    assert pairs.tolist() == [[0, 1], [0, 3], [3, 4]] and crowded == 1
    pairs, crowded = neardup.candidate_pairs(prints, max_bucket=3)
    assert pairs.tolist() == [[0, 1], [0, 3], [3, 4], [4, 5], [4, 6], [5, 6]] and crowded == 0


def test_audio_ber_and_frame_distance_by_hand():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, 40, dtype=np.uint64).astype("<u4")
    y = x[3:].copy()  # the copy starts 3 items later: trimmed
    y[:4] ^= np.uint32(0b1111)  # 4 bits wrong in each of 4 items: 16 of 37 * 32 bits
    ber = fingerprints.audio_ber(x.tobytes(), y.tobytes(), max_shift=5, min_overlap=10)
    assert ber == pytest.approx(16 / (37 * 32))
    assert fingerprints.audio_ber(x.tobytes(), y.tobytes(), max_shift=2, min_overlap=10) > 0.3  # the shift is too far
    frames = np.zeros((3, 8), np.uint8)
    other = frames.copy()
    other[0, 0], other[1, :2], other[2, :] = 0b1, 0b11, 0xFF  # 1, 4 and 64 bits from the all-zero frames
    # Each of `other`'s frames to its closest: 1, 4, 64 -> median 4; the other way, every zero frame is 1 away.
    assert fingerprints.frame_distance(frames.tobytes(), other.tobytes()) == 1.0
    # From other[1:] (4 and 64 bits away) the median is 34; from the one zero frame, 4: the better side counts.
    assert fingerprints.frame_distance(other[1:].tobytes(), frames[:1].tobytes()) == 4.0


def test_verdicts_are_written_into_clips_and_undone(fingerprinted, tmp_path):
    rows, clips, _ = fingerprinted
    writer = ClipTableWriter(str(tmp_path), flush_rows=10)
    writer.add(_table(rows))
    writer.close()
    found = neardup.find_duplicates(read_clip_table(str(tmp_path)), NearDupConfig(enabled=True))
    assert neardup.apply_verdicts(str(tmp_path), found) == 36
    table = read_clip_table(str(tmp_path)).to_pylist()
    assert len(table) == 44  # every clip still has its one row
    rejected = [r for r in table if r["status"] == "rejected"]
    assert len(rejected) == 36 and all(
        (r["reject_stage"], r["reject_reason"], r["failure"]) == ("neardup", "near_duplicate", "final")
        and r["duplicate_of"] in r["reject_detail"] and r["duplicate_of"] == found.duplicate_of[r["clip_id"]]
        for r in rejected)
    # Judged again, the same verdicts change nothing; with no duplicates found (neardup turned off) all come back.
    again = neardup.find_duplicates(read_clip_table(str(tmp_path)), NearDupConfig(enabled=True))
    assert again.duplicate_of == found.duplicate_of and neardup.apply_verdicts(str(tmp_path), again) == 0
    assert neardup.apply_verdicts(str(tmp_path), neardup.Duplicates()) == 36
    assert all(r["status"] == "kept" and r["duplicate_of"] is None for r in read_clip_table(str(tmp_path)).to_pylist())


def _clip(name: str, video: str, duplicate_of: str | None = None) -> dict:
    row = new_row(f"/d/{name}.mp4", source_video=video, **ANNOTATION)
    if duplicate_of:
        row.update(status="rejected", reject_stage="neardup", reject_reason="near_duplicate",
                   duplicate_of=new_row(f"/d/{duplicate_of}.mp4")["clip_id"])
    return {k: row[k] for k in CLIP_SCHEMA.names}


def _verdict(row: dict, intensity: int) -> dict:
    return {"clip_id": row["clip_id"], "source_video": row["source_video"], "verdict": "ok",
            "av_relation": "consistent", "av_intensity": intensity, "av_reason": "r", "fail_reason": None}


@pytest.mark.parametrize("top", ["r1", "d4"])
def test_splits_hold_a_duplicate_group_out_like_one_recording(top):
    """Corpus A's recording VA has r1, r2; corpus B's recording VB has d1 (a near-duplicate of r1, rejected) and d4.
    Whichever of VA and VB has the test clip, the other's clips leave training too; other recordings stay."""
    clips = pa.Table.from_pylist([_clip("r1", "VA"), _clip("r2", "VA"), _clip("d1", "VB", duplicate_of="r1"),
                                  _clip("d4", "VB"), _clip("z", "VZ")], schema=CLIP_SCHEMA)
    name = {r["clip_id"]: r["source_uri"][3:-4] for r in clips.to_pylist()}
    intensity = {"r1": 5, "r2": 4, "d4": 5, "z": 1} | {top: 9}
    candidates = holdout.sed_candidates(clips)
    verdicts = {r["clip_id"]: _verdict(r, intensity[name[r["clip_id"]]]) for r in candidates.to_pylist()}
    merged = neardup.recording_groups(clips)
    assert merged == {"VB": "VA"}
    splits = holdout.make_splits(candidates, verdicts, per_subset=1, merged_recordings=merged)
    assert [name[r["clip_id"]] for r in splits.test] == [top]
    assert [name[r["clip_id"]] for r in splits.train] == ["z"]
    assert splits.stats["near_duplicates"] == {"linked_recordings": 2, "groups_in_test": 1, "groups_in_train": 0,
                                               "shared": 0}
    # Without the merge (what the split did before near-duplicates), the other corpus's recording stays in training.
    plain = holdout.make_splits(candidates, verdicts, per_subset=1)
    assert sorted(name[r["clip_id"]] for r in plain.train) == {"r1": ["d4", "z"], "d4": ["r1", "r2", "z"]}[top]


def test_benchmark_fingerprints_have_the_size_of_real_ones():
    from engine.devkit.neardup_benchmark import synthetic_clips

    table = synthetic_clips(50, duration_s=4.0)
    # 4 s: int(4 * 32.3) - 20 = 109 items of 4 bytes; 8 frame hashes of 8 bytes.
    assert {len(b) for b in table.column("audio_fingerprint").to_pylist()} == {436}
    assert {len(b) for b in table.column("frame_hashes").to_pylist()} == {64}
    assert neardup.find_duplicates(table, NearDupConfig(enabled=True)).stats["compared"] == 50
