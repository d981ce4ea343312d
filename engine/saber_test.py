"""SABER-Test selection: the most intense consistent and inconsistent clips, disjoint from training data.

A judge labels each candidate's audio-visual relation (consistent | inconsistent) with an intensity 0-10
(paper Sec. III-b); the top-N of each subset form the test split, and every clip sharing a source video
with a test clip leaves the SED training records, so no video is on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SaberTestCandidate:
    clip_id: str
    source_video: str
    relation: str  # consistent | inconsistent
    intensity: int
    reason: str = ""


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


def split_train(records: list[dict[str, Any]], test: list[SaberTestCandidate], video_of: dict[str, str]
                ) -> list[dict[str, Any]]:
    """SED records with every clip of a test source video removed (video_of: clip_id -> source video)."""
    test_videos = {c.source_video for c in test}
    return [r for r in records if video_of.get(r["clip_id"], r["clip_id"]) not in test_videos]
