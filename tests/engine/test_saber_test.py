from engine.dataset.exports import llama_factory_dataset_info, to_llama_factory, to_ms_swift
from engine.dataset.saber_test import SaberTestCandidate, group_stats, select_test, split_train


def _c(cid, video, relation, intensity):
    return SaberTestCandidate(cid, video, relation, intensity)


CANDIDATES = [
    _c("a1", "vidA", "inconsistent", 9), _c("a2", "vidA", "inconsistent", 8),  # same video: one pick
    _c("b1", "vidB", "inconsistent", 7), _c("c1", "vidC", "inconsistent", 9),
    _c("d1", "vidD", "consistent", 3), _c("e1", "vidE", "consistent", 10), _c("f1", "vidF", "consistent", 6),
    _c("g1", "vidG", "consistent", 6),
]


def test_top_n_per_subset_by_intensity_with_stable_ties():
    picked = select_test(CANDIDATES, per_subset=2)
    consistent = [c.clip_id for c in picked if c.relation == "consistent"]
    inconsistent = [c.clip_id for c in picked if c.relation == "inconsistent"]
    assert consistent == ["e1", "f1"]  # 10, then the 6-6 tie broken by clip id (f1 < g1)
    assert inconsistent == ["a1", "c1"]  # 9, 9 (a1 < c1); a2 skipped with its video taken
    assert [c.intensity for c in picked] == [10, 6, 9, 9]


def test_subsets_smaller_than_n_take_what_there_is():
    picked = select_test(CANDIDATES, per_subset=900)
    assert sum(c.relation == "consistent" for c in picked) == 4
    assert sum(c.relation == "inconsistent" for c in picked) == 3  # vidA contributes once


def test_training_records_lose_every_clip_of_a_test_video():
    records = [{"clip_id": cid} for cid in ("a1", "a2", "a3", "b1", "z9")]
    video_of = {"a1": "vidA", "a2": "vidA", "a3": "vidA", "b1": "vidB", "z9": "vidZ"}
    test = [_c("a1", "vidA", "inconsistent", 9)]
    kept = split_train(records, test, video_of)
    assert [r["clip_id"] for r in kept] == ["b1", "z9"]
    assert not {video_of[r["clip_id"]] for r in kept} & {c.source_video for c in test}


def test_exports_carry_the_same_chat_and_media():
    record = {"system": "S", "prompt": "P", "target": "T", "source_uri": "s3://b/x.mp4"}
    for row in (to_ms_swift(record), to_llama_factory(record)):
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][1]["content"] == "<video><audio>P" and row["messages"][2]["content"] == "T"
        assert row["videos"] == row["audios"] == ["s3://b/x.mp4"]
    info = llama_factory_dataset_info("saber_sed", "sed_llamafactory.jsonl")
    assert info["saber_sed"]["columns"]["videos"] == "videos"


def test_training_records_lose_every_clip_of_a_test_speaker_when_asked():
    records = [{"clip_id": cid} for cid in ("a1", "b1", "b2", "c1", "n1")]
    video_of = {"a1": "vidA", "b1": "vidB", "b2": "vidB2", "c1": "vidC", "n1": "vidN"}
    speaker_of = {"a1": "ann", "b1": "bob", "b2": "bob", "c1": "ann", "n1": None}
    test = [SaberTestCandidate("b1", "vidB", "consistent", 7, speaker="bob"),
            SaberTestCandidate("n1", "vidN", "inconsistent", 5, speaker=None)]
    # By recording only: b1 and n1 are test clips, b2 (another recording of bob) stays.
    assert [r["clip_id"] for r in split_train(records, test, video_of)] == ["a1", "b2", "c1"]
    # By speaker too: b2 leaves with bob; n1's unknown speaker holds out nobody else.
    assert [r["clip_id"] for r in split_train(records, test, video_of, speaker_of)] == ["a1", "c1"]


def test_group_stats_count_each_side_and_the_overlap():
    video_of = {"a1": "vidA", "a2": "vidA", "b1": "vidB", "c1": "vidC", "d1": "vidD"}
    speaker_of = {"a1": "ann", "a2": "ann", "b1": "bob", "c1": "ann", "d1": None}
    stats = group_stats(["a1", "d1"], ["b1", "c1"], video_of, speaker_of)
    # Test: recordings vidA, vidD; speaker ann (d1 has none). Training: vidB, vidC; bob and ann -> ann shared.
    assert stats == {"recordings": {"test": 2, "train": 2, "shared": 0},
                     "speakers": {"test": 1, "train": 2, "shared": 1, "test_clips_without_speaker": 1}}
    assert group_stats(["a1"], ["a2"], video_of, speaker_of)["recordings"]["shared"] == 1
