"""SABER-Test selection: the most intense consistent and inconsistent clips, disjoint from training data.

A judge labels each candidate's audio-visual relation (consistent | inconsistent) with an intensity 0-10
(paper Sec. III-b); the top-N of each subset form the test split, and every clip sharing a source video
with a test clip leaves the SED training records, so no video is on both sides. Optionally speakers are held
out the same way (a corpus adapter's `speaker`): no person is then on both sides either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class SaberTestCandidate:
    clip_id: str
    source_video: str
    relation: str  # consistent | inconsistent
    intensity: int
    reason: str = ""
    speaker: str | None = None


def select_test(candidates: list[SaberTestCandidate], per_subset: int) -> list[SaberTestCandidate]:
    """Top `per_subset` by intensity in each relation; ties broken by clip id so reruns agree.

    A source video contributes at most one clip per subset: several clips of one conversation would make
    the subset less diverse than its size says.
    """
    chosen: list[SaberTestCandidate] = []
    for relation in ("consistent", "inconsistent"):
        pool = sorted((c for c in candidates if c.relation == relation), key=lambda c: (-c.intensity, c.clip_id))
        seen: set[str] = set()
        picked = []
        for candidate in pool:
            if candidate.source_video in seen:
                continue
            seen.add(candidate.source_video)
            picked.append(candidate)
            if len(picked) == per_subset:
                break
        chosen += picked
    return chosen


def select_test_table(judged: pa.Table, per_subset: int, window: int = 4096) -> list[SaberTestCandidate]:
    """select_test on an Arrow table (columns clip_id, source_video, relation, intensity, reason, speaker), sorting in
    Arrow and making Python objects only for the rows it walks past: a few more than `per_subset` a subset, however
    many candidates there are."""
    chosen: list[SaberTestCandidate] = []
    for relation in ("consistent", "inconsistent"):
        pool = judged.filter(pc.equal(judged.column("relation"), relation))
        pool = pool.take(pc.sort_indices(pool, [("intensity", "descending"), ("clip_id", "ascending")]))
        seen: set[str] = set()
        picked: list[SaberTestCandidate] = []
        for start in range(0, pool.num_rows, window):
            for row in pool.slice(start, window).to_pylist():
                if row["source_video"] in seen:
                    continue
                seen.add(row["source_video"])
                picked.append(SaberTestCandidate(row["clip_id"], row["source_video"], relation, row["intensity"],
                                                 row["reason"] or "", row["speaker"]))
                if len(picked) == per_subset:
                    break
            if len(picked) == per_subset:
                break
        chosen += picked
    return chosen


def split_train(records: list[dict[str, Any]], test: list[SaberTestCandidate], video_of: dict[str, str],
                speaker_of: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
    """SED records with every clip of a test source video removed (video_of: clip_id -> source video) and, given
    `speaker_of` (clip_id -> speaker), every clip of a test speaker too. A clip without a speaker is held out by
    its recording only: an unknown speaker is nobody's."""
    test_videos = {c.source_video for c in test}
    test_speakers = {c.speaker for c in test if c.speaker} if speaker_of is not None else set()
    return [r for r in records if video_of.get(r["clip_id"], r["clip_id"]) not in test_videos
            and (speaker_of or {}).get(r["clip_id"]) not in test_speakers]


def group_stats(test_ids: list[str], train_ids: list[str], video_of: dict[str, str],
                speaker_of: dict[str, str | None]) -> dict[str, Any]:
    """Recordings and speakers on each side of the split and on both (`shared`: zero for what is held out; for
    speakers when they are not held out, how many people the test split shares with training)."""
    def distinct(ids: list[str], of: dict[str, Any]) -> set[str]:
        return {of[i] for i in ids if of.get(i)}

    videos = distinct(test_ids, video_of), distinct(train_ids, video_of)
    speakers = distinct(test_ids, speaker_of), distinct(train_ids, speaker_of)
    return {"recordings": {"test": len(videos[0]), "train": len(videos[1]), "shared": len(videos[0] & videos[1])},
            "speakers": {"test": len(speakers[0]), "train": len(speakers[1]), "shared": len(speakers[0] & speakers[1]),
                         "test_clips_without_speaker": sum(not speaker_of.get(i) for i in test_ids)}}
