"""Near-duplicates across corpora: a fingerprint per clip, an index lookup, groups that keep one representative.

Several corpora cut clips from the same films and series (MELD and MEmoR both from Friends), and one clip may reach
a build twice: re-encoded, rescaled, cropped, trimmed. Each clip gets a fingerprint where its media is decoded
(engine.stages.fingerprint): an 8x8 average hash of up to KEY_FRAMES frames and the Chromaprint items of its audio.
After the stream, `find_duplicates` looks clips up in an inverted index over the audio items (clips sharing an item
value become candidates; no pair is compared otherwise), verifies each candidate pair on both modalities, and joins
the verified pairs into groups (connected components). Each group keeps one representative; `apply_verdicts` records
the others in clips/ as rejected (`neardup`/`near_duplicate`, `duplicate_of`), and `recording_groups` merges their
recordings, so SABER-Test holds a group out like one source video.

Why the audio leads: in studio corpora (RAVDESS, CREMA-D, MEAD) every clip of a speaker is the same shot, so frames
alone pair different utterances, while two recordings of speech are never as close as two copies of one recording.
The frames confirm that the footage is the same (one soundtrack over other pictures is no duplicate).

Cost and memory, measured on this project's 2-core test machine (busy): the fingerprint stage spends ~6 ms on a 3.5 s
clip (1.3 ms for 8 frames from libjpeg's 1/8-scale decode, 4.5 ms for Chromaprint). A fingerprint is 64 B of frame
hashes plus 4 B per audio item (~32 a second: ~440 B for a 4 s clip), so ~0.3 GB of clips/ columns at 600K clips.
The step holds those fingerprints and an index of 8 B per distinct item (65M entries, 0.52 GB, at 600K clips of
4 s); on 600K random 4 s fingerprints it took 44 s (0.07 ms a clip) and +0.84 GB peak memory beyond the 0.34 GB of
columns, most of the time spent verifying the ~500K pairs that share an item by chance.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.core import storage
from engine.core.config import NearDupConfig
from engine.core.failures import FINAL
from engine.core.fingerprints import audio_ber, frame_distance, items_per_second
from engine.dataset.writer import read_with_retries, write_parquet_whole

STAGE, REASON = "neardup", "near_duplicate"
# ---------------------------------------------------------------- the index


def candidate_pairs(prints: Sequence[bytes], max_bucket: int) -> tuple[np.ndarray, int]:
    """(pairs, crowded): clip-number pairs (i < j) sharing at least one audio item value, from an inverted index
    (sort the distinct (item, clip) entries by item; each run of equal items is a bucket). Buckets of more than
    `max_bucket` clips are skipped (their count is returned): cost stays O(entries x max_bucket), never all pairs."""
    entries = _index_entries(prints)
    words = entries.view("<u4")  # little-endian: clip number, item, clip number, item, ...
    owner, keys = words[0::2], words[1::2]  # views, no copies
    inside = np.flatnonzero(keys[1:] == keys[:-1])  # entry k+1 is in entry k's bucket: only buckets of 2+ clips
    if not inside.size:
        return np.empty((0, 2), np.uint32), 0
    breaks = np.flatnonzero(np.diff(inside) > 1)
    starts = inside[np.r_[0, breaks + 1]]
    sizes = inside[np.r_[breaks, inside.size - 1]] + 2 - starts
    found = [np.empty((0, 2), np.uint32)]
    for size in np.unique(sizes[sizes <= max_bucket]):
        members = owner[starts[sizes == size][:, None] + np.arange(size)]  # one row per bucket of this size
        first, second = np.triu_indices(size, 1)
        found.append(np.stack([members[:, first].ravel(), members[:, second].ravel()], axis=1))
    pairs = np.unique(np.sort(np.concatenate(found), axis=1), axis=0)
    return pairs, int((sizes > max_bucket).sum())


def _index_entries(prints: Sequence[bytes]) -> np.ndarray:
    """Sorted little-endian uint64 entries, item in the high word and clip number in the low, one per distinct item
    of each clip: 8 bytes an entry, sorted in place (no argsort index beside it)."""
    entries = np.empty(sum(len(p) // 4 for p in prints), "<u8")
    filled = 0
    for clip, fingerprint in enumerate(prints):
        items = np.unique(np.frombuffer(fingerprint, "<u4"))
        entries[filled:filled + items.size] = items.astype("<u8") << np.uint64(32) | np.uint64(clip)
        filled += items.size
    entries = entries[:filled]
    entries.sort()
    return entries


# ---------------------------------------------------------------- groups and verdicts


@dataclass
class Duplicates:
    """Verdicts for the non-representative members of each group, and the figures for report.json."""

    duplicate_of: dict[str, str] = field(default_factory=dict)  # clip_id -> its group's representative
    detail: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


FINGERPRINT_COLUMNS = ("clip_id", "dataset", "status", "reject_stage", "width", "height", "duration_s", "video_desc",
                       "frame_hashes", "audio_fingerprint")


def eligible(table: pa.Table) -> pa.Table:
    """Clips the stream kept (near-duplicate verdicts of earlier builds included: they are judged again, so a new
    clip or new thresholds can change a group), with the columns the step reads."""
    mask = pc.or_kleene(pc.equal(table.column("status"), "kept"), pc.equal(table.column("reject_stage"), STAGE))
    return table.filter(pc.fill_null(mask, False)).select(list(FINGERPRINT_COLUMNS))


def _representative_order(row: dict[str, Any]) -> tuple[Any, ...]:
    """Best first: annotated (only an annotated clip becomes a SED record), most pixels (a rescaled or cropped copy
    has fewer), longest (a trimmed copy is shorter), then the smallest clip id, so reruns agree."""
    return (row["video_desc"] is None, -((row["width"] or 0) * (row["height"] or 0)), -(row["duration_s"] or 0.0),
            row["clip_id"])


def find_duplicates(table: pa.Table, config: NearDupConfig) -> Duplicates:
    """Groups among the eligible clips of `table` (the clip table) and a verdict for every member but the best.
    Only the fingerprints are held for every clip; the other columns only for the members of a group."""
    clips = eligible(table)
    audio = clips.column("audio_fingerprint").to_pylist()
    frames = clips.column("frame_hashes").to_pylist()
    usable = [k for k, (a, f) in enumerate(zip(audio, frames, strict=True))
              if a and f and len(a) // 4 >= config.min_audio_items]
    pairs, crowded = candidate_pairs([audio[k] for k in usable], config.max_bucket_clips)
    edges, evidence = _verified_edges([(usable[i], usable[j]) for i, j in pairs.tolist()], audio, frames, config)
    groups = _components(edges)
    members = sorted({k for group in groups for k in group})
    columns = ["clip_id", "dataset", "width", "height", "duration_s", "video_desc"]
    meta = dict(zip(members, clips.take(pa.array(members, pa.int64())).select(columns).to_pylist(), strict=True))
    result = Duplicates()
    for group in groups:
        best, *others = sorted(group, key=lambda k: _representative_order(meta[k]))
        for k in others:
            ber, bits, other = evidence[k]
            cid = meta[k]["clip_id"]
            result.duplicate_of[cid] = meta[best]["clip_id"]
            result.detail[cid] = (f"near-duplicate of {meta[best]['clip_id']} ({meta[best]['dataset']}), group of "
                                  f"{len(group)}; closest match {meta[other]['clip_id']}: audio BER {ber:.3f}, "
                                  f"frames {bits:.0f}/64 bits")
    fingerprinted = sum(f is not None for f in frames)
    result.stats = {
        "eligible": clips.num_rows, "compared": len(usable),
        # kept clips of parts written before fingerprints existed (rerun them to compare them) ...
        "not_fingerprinted": clips.num_rows - fingerprinted,
        # ... and clips with too little audio (or no frames) to compare
        "too_short": fingerprinted - len(usable),
        "candidate_pairs": len(pairs), "crowded_items_skipped": crowded, "duplicate_pairs": len(edges),
        "groups": len(groups),
        "groups_across_corpora": sum(len({meta[k]["dataset"] for k in g}) > 1 for g in groups),
        "largest_group": max((len(g) for g in groups), default=0), "rejected": len(result.duplicate_of)}
    return result


def _verified_edges(candidates: list[tuple[int, int]], audio: list[bytes], frames: list[bytes],
                    config: NearDupConfig) -> tuple[list[tuple[int, int]], dict[int, tuple[float, float, int]]]:
    """The candidate pairs that match on both modalities, and each clip's closest match (BER, bits, other clip)."""
    max_shift = round(config.max_shift_s * items_per_second())
    edges: list[tuple[int, int]] = []
    evidence: dict[int, tuple[float, float, int]] = {}
    for i, j in candidates:
        ber = audio_ber(audio[i], audio[j], max_shift, config.min_audio_items)
        if ber > config.max_audio_ber:
            continue
        bits = frame_distance(frames[i], frames[j])
        if bits <= config.max_frame_bits:
            edges.append((i, j))
            for k, other in ((i, j), (j, i)):
                if k not in evidence or ber < evidence[k][0]:
                    evidence[k] = (ber, bits, other)
    return edges, evidence


def _components(edges: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the verified pairs (scipy's csgraph), each a sorted list of clip numbers."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = sorted({k for edge in edges for k in edge})
    if not nodes:
        return []
    index = {k: n for n, k in enumerate(nodes)}
    rows, cols = zip(*((index[i], index[j]) for i, j in edges), strict=True)
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for n, k in enumerate(nodes):
        groups.setdefault(int(label[n]), []).append(k)
    return list(groups.values())


# ---------------------------------------------------------------- recording the verdicts


def _wanted(row: dict[str, Any], found: Duplicates) -> dict[str, Any]:
    """The verdict columns a stream-kept row should have now."""
    cid = row["clip_id"]
    if cid in found.duplicate_of:
        return {"status": "rejected", "reject_stage": STAGE, "reject_reason": REASON,
                "reject_detail": found.detail[cid][:500], "failure": FINAL, "duplicate_of": found.duplicate_of[cid]}
    return {"status": "kept", "reject_stage": None, "reject_reason": None, "reject_detail": None, "failure": None,
            "duplicate_of": None}


def apply_verdicts(output: str, found: Duplicates) -> int:
    """Rewrites (each whole, as the writer does) the clips/ parts whose rows' near-duplicate verdicts changed: new
    duplicates rejected, clips no longer in a group kept again. Only rows the stream kept are touched. Returns the
    number of rows changed. A run killed half way leaves some parts old: the next build recomputes and finishes."""
    directory = storage.join(output, "clips")
    fs = storage.filesystem(directory)
    changed = 0
    for part in sorted(fs.glob(f"{storage.strip_protocol(directory)}/part-*.parquet")):
        table = pq.read_table(io.BytesIO(read_with_retries(fs, part)))
        if "duplicate_of" not in table.column_names:
            continue  # written before fingerprints existed: none of its clips was compared
        rows = table.to_pylist()
        touched = 0
        for row in rows:
            if row["status"] == "kept" or row["reject_stage"] == STAGE:
                wanted = _wanted(row, found)
                if any(row[k] != v for k, v in wanted.items()):
                    row.update(wanted)
                    touched += 1
        if touched:
            write_parquet_whole(directory, part.rsplit("/", 1)[-1], pa.Table.from_pylist(rows, schema=table.schema))
            changed += touched
    return changed


def recording_groups(table: pa.Table) -> dict[str, str]:
    """Recording -> the recording that stands for its group, for recordings linked by near-duplicates (a duplicate's
    recording joins its representative's, transitively). Recordings as engine.dataset.holdout groups them: source_video,
    else the clip's URI. SABER-Test holds a merged group out like one recording."""
    rows = table.select(["clip_id", "source_video", "source_uri", "duplicate_of"]).to_pylist()
    recording = {r["clip_id"]: r["source_video"] or r["source_uri"] for r in rows}
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])  # path halving
            x = parent[x]
        return x

    for row in rows:
        if row["duplicate_of"] and row["duplicate_of"] in recording:
            a, b = sorted((root(recording[row["clip_id"]]), root(recording[row["duplicate_of"]])))
            if a != b:
                parent[b] = a  # the smaller name stands for the group: deterministic
    return {rec: root(rec) for rec in parent}
