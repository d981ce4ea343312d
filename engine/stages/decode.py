"""The one decode per clip: sampled frames (JPEG in the row) and 16 kHz mono audio, for all later stages."""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from engine.core.config import MediaConfig
from engine.core.media import EncodedClip, MediaError, NativeCalls, ProbeResult, open_source
from engine.core.schema import AUDIO_SAMPLE_RATE
from engine.stages.base import Row, RowStage

_PROBED = tuple(field.name for field in fields(ProbeResult))


class DecodeStage(RowStage):
    """Decodes (`media.decoder`: decord for the frames, PyAV where decord fails, PyAV for the audio) in the media
    child process, where a crash or a hang rejects this clip only (see engine.core.isolation), and checks the decoded
    lengths against what the container declares (truncation).

    Each track is held to its own declared length, and the two together to the container's: a clip whose audio
    ends before its video (trailing frames without sound) is kept, with `audio_covered_s` saying how much of the
    video has audio under it; a track or a file that delivers less than it declares is `duration_mismatch`.
    """

    name = "decode"
    requires = ("source_uri", *_PROBED)
    produces = ("n_frames", "decoded_duration_s", "frames_jpeg", "frame_times", "audio_pcm", "decoder",
                "audio_offset_s", "audio_covered_s")

    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self.native = NativeCalls("decode", config.isolation, config.decode_timeout_s, config.decode_attempts)

    def process_row(self, row: Row) -> None:
        source = row.pop("_media", None) or open_source(row["source_uri"])
        probed = ProbeResult(**{name: row[name] for name in _PROBED})
        cfg = self.config
        clip = self.native.run(row["source_uri"], "engine.core.media.decode_encoded", cfg.decoder, source, probed,
                               fps=cfg.fps, max_frames=cfg.max_frames, max_side=cfg.max_frame_side,
                               sample_rate=AUDIO_SAMPLE_RATE, jpeg_quality=cfg.jpeg_quality)
        audio_end = clip.audio_offset_s + clip.audio_duration_s
        row.update(decoded_duration_s=clip.video_duration_s, decoder=clip.decoder, audio_offset_s=clip.audio_offset_s,
                   audio_covered_s=max(0.0, min(clip.video_duration_s, audio_end) - max(0.0, clip.audio_offset_s)))
        shortfalls = self._shortfalls(probed, clip)
        if shortfalls:
            raise MediaError("duration_mismatch", "; ".join(shortfalls))
        row.update(n_frames=len(clip.frames_jpeg), frames_jpeg=clip.frames_jpeg, frame_times=clip.frame_times,
                   audio_pcm=clip.audio_pcm)

    def _shortfalls(self, probed: ProbeResult, clip: EncodedClip) -> list[str]:
        """What fell short of its declared length by more than media.duration_tolerance (encoders pad the last
        GOP or audio frame, so exact equality is too strict)."""
        keep = 1 - self.config.duration_tolerance
        found = [f"decoded {kind} {got:.2f}s of its declared {declared:.2f}s"
                 for kind, got, declared in (("video", clip.video_duration_s, probed.video_track_s),
                                             ("audio", clip.audio_duration_s, probed.audio_track_s))
                 if declared and got < declared * keep]
        audio_end = clip.audio_offset_s + clip.audio_duration_s
        span = max(clip.video_duration_s, audio_end) - min(0.0, clip.audio_offset_s)
        if probed.duration_s and span < probed.duration_s * keep:
            found.append(f"decoded video {clip.video_duration_s:.2f}s / audio {clip.audio_duration_s:.2f}s "
                         f"vs container {probed.duration_s:.2f}s")
        return found


def audio_from_row(row: Row) -> np.ndarray:
    """The decoded audio of a row as float32 samples at AUDIO_SAMPLE_RATE, sample 0 at the first frame's time."""
    return np.frombuffer(row["audio_pcm"], dtype="<f4")
