"""The clip table: one row per input clip, from the source listing to `clips/` Parquet.

Every row carries every column from the start (nulls until a stage fills them), so blocks keep one
Arrow schema through the whole plan. Columns under WORK_FIELDS hold decoded media and never reach disk.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import pyarrow as pa

from engine.core.failures import FINAL, RETRYABLE, FailureClass

Status = Literal["kept", "rejected"]

ANNOTATION_FIELDS = (
    "video_desc",
    "speech_content",
    "acoustic_feat",
    "facial_exp_desc",
    "body_lang_desc",
    "sentiment_analysis",
)

CLIP_FIELDS: list[pa.Field] = [
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("dataset", pa.string()),
    pa.field("lang", pa.string()),
    pa.field("label", pa.string()),
    # The recording a clip was cut from (several utterances of one dialogue share it): the unit that
    # SABER-Test holds out, so no recording has clips on both sides of the split.
    pa.field("source_video", pa.string()),
    # From the corpus adapters (engine.dataset.corpora): the person speaking (SABER-Test can hold out whole speakers),
    # the unified emotion beside the corpus's own `label`, the corpus's split, and its extras (intensity, sentiment,
    # valence ...) as JSON text. Null for inputs that did not come through an adapter.
    pa.field("speaker", pa.string()),
    pa.field("emotion", pa.string()),
    pa.field("corpus_split", pa.string()),
    pa.field("corpus_extras", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reject_stage", pa.string()),
    pa.field("reject_reason", pa.string()),
    pa.field("reject_detail", pa.string()),
    # engine.core.failures: "final" or "gave_up" for a rejected clip, null for a kept one. A "retryable" failure never
    # reaches clips/ (the clip is not finished: it waits in attempts/clips/ for the next run).
    pa.field("failure", pa.string()),
    pa.field("attempts", pa.int32()),  # runs that processed this clip, this one included
    # probe
    pa.field("duration_s", pa.float64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("fps", pa.float64()),
    pa.field("has_video", pa.bool_()),
    pa.field("has_audio", pa.bool_()),
    pa.field("video_codec", pa.string()),
    pa.field("audio_codec", pa.string()),
    # width x height above are as displayed: the picture turned `rotation` degrees clockwise (phone video) and
    # stretched by its sample aspect ratio (anamorphic MPEG-2).
    pa.field("rotation", pa.int32()),
    # Each track's own declared length (null where the container keeps none, as mkv/webm/flv): the decode
    # stage checks each decoded track against it, so a track shorter than the clip is not truncation.
    pa.field("video_track_s", pa.float64()),
    pa.field("audio_track_s", pa.float64()),
    pa.field("audio_track", pa.int32()),  # the decoded one (the default-flagged, else the first), among audio tracks
    pa.field("audio_channels", pa.int32()),  # of that track, before the downmix to mono
    # decode
    pa.field("n_frames", pa.int32()),
    # The decoded video's length: the span the frames and the aligned audio refer to.
    pa.field("decoded_duration_s", pa.float64()),
    # What decoded the frames: decord, or pyav where decord fails (some VP9) or misplaces them (MPEG-PS/TS).
    pa.field("decoder", pa.string()),
    # Audio start minus video start: the audio is put on the video's clock (a late start padded with silence,
    # an early one cut), and the seconds of the video that have audio under them.
    pa.field("audio_offset_s", pa.float64()),
    pa.field("audio_covered_s", pa.float64()),
    # noise
    pa.field("snr_db", pa.float64()),
    # fingerprint (engine.dataset.neardup): 8x8 average hashes of up to 8 key frames (8 bytes each, in time order) and
    # the Chromaprint items of the audio (little-endian uint32, ~32 a second); empty where the audio is too short.
    pa.field("frame_hashes", pa.binary()),
    pa.field("audio_fingerprint", pa.binary()),
    # neardup: for a clip rejected as a near-duplicate (reject_reason near_duplicate), its group's representative.
    pa.field("duplicate_of", pa.string()),
    # asr
    pa.field("asr_text", pa.string()),
    pa.field("asr_language", pa.string()),
    pa.field("asr_metric", pa.string()),
    pa.field("asr_wer", pa.float64()),
    # describe + consistency
    pa.field("description", pa.string()),
    pa.field("consistency_score", pa.float64()),
    pa.field("consistency_method", pa.string()),
    # annotation (official SABER layout, flattened)
    *[pa.field(name, pa.string()) for name in ANNOTATION_FIELDS],
    pa.field("annotation_source", pa.string()),
    # provenance
    pa.field("asr_model", pa.string()),
    # JSON {stage: "model_id prompt@hash"} for every model-made column (annotate, describe, judges)
    pa.field("provenance", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("processed_at", pa.timestamp("ms", tz="UTC")),
]

WORK_FIELDS: list[pa.Field] = [
    # The annotation as given: inline JSON text (manifests) or the URI of a sidecar .json (folders).
    pa.field("annotation_raw", pa.string()),
    pa.field("annotation_uri", pa.string()),
    pa.field("frames_jpeg", pa.list_(pa.binary())),
    pa.field("frame_times", pa.list_(pa.float32())),
    # 16 kHz mono float32 PCM, little endian.
    pa.field("audio_pcm", pa.binary()),
]

CLIP_SCHEMA = pa.schema(CLIP_FIELDS)
WORK_SCHEMA = pa.schema(CLIP_FIELDS + WORK_FIELDS)
WORK_COLUMNS = tuple(f.name for f in WORK_FIELDS)
AUDIO_SAMPLE_RATE = 16_000


def clip_id_for(source_uri: str) -> str:
    """Stable id from the source URI, so reruns and resumes agree on which clip is which."""
    return hashlib.sha1(source_uri.encode("utf-8")).hexdigest()[:20]


def new_row(source_uri: str, **values: Any) -> dict[str, Any]:
    """A pending row with every column present; `values` fill the source-level columns."""
    row: dict[str, Any] = dict.fromkeys(WORK_SCHEMA.names)
    row.update(clip_id=clip_id_for(source_uri), source_uri=source_uri, status="kept")
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"unknown clip columns: {sorted(unknown)}")
    row.update(values)
    return row


def reject(row: dict[str, Any], stage: str, reason: str, detail: str = "",
           failure: FailureClass = FINAL) -> dict[str, Any]:
    """Marks a row rejected; later stages pass it through untouched. `failure` (engine.core.failures) says whether
    this is a verdict about the clip (final) or a fault of the world that the next run retries (retryable)."""
    row.update(status="rejected", reject_stage=stage, reject_reason=reason, reject_detail=detail[:500] or None,
               failure=failure)
    return row


def is_retryable(row: dict[str, Any]) -> bool:
    return row.get("failure") == RETRYABLE


def is_alive(row: dict[str, Any]) -> bool:
    return row["status"] == "kept"


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema = WORK_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)
