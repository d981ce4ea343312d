"""Near-duplicate fingerprints (engine.core.fingerprints), computed where the media is already decoded
(engine.dataset.neardup compares them after the stream)."""

from __future__ import annotations

from engine.core.fingerprints import audio_fingerprint, frame_hashes
from engine.stages.base import Row, RowStage
from engine.stages.noise import covered_audio


class FingerprintStage(RowStage):
    """Average hashes of up to 8 key frames and the Chromaprint items of the audio, into two compact clips/ columns.
    Rejects nothing: a clip with too little audio for a fingerprint gets an empty one and is left out of the
    comparison (counted in report.json)."""

    name = "fingerprint"
    requires = ("frames_jpeg", "audio_pcm", "audio_offset_s", "audio_covered_s")
    produces = ("frame_hashes", "audio_fingerprint")

    def __init__(self) -> None:
        import chromaprint  # noqa: F401 - fails here, once per worker, when libchromaprint is missing

    def process_row(self, row: Row) -> None:
        # Only where the audio track has sound: decode pads a late start with digital silence, which would be an
        # item run that every such clip shares.
        row.update(frame_hashes=frame_hashes(row["frames_jpeg"] or []),
                   audio_fingerprint=audio_fingerprint(covered_audio(row)))
