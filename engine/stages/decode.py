"""The one decode per clip: sampled frames (JPEG in the row) and 16 kHz mono audio, for all later stages."""

from __future__ import annotations

import numpy as np

from engine.config import MediaConfig
from engine.media import MediaError, NativeCalls, ProbeResult, open_source
from engine.schema import AUDIO_SAMPLE_RATE
from engine.stages.base import Row, RowStage


class DecodeStage(RowStage):
    """Decodes with decord (`media.decoder`) in the media child process, where a crash or a hang rejects this
    clip only (see engine.isolation), and checks the decoded length against the container's claim
    (truncation)."""

    name = "decode"
    requires = ("source_uri", "duration_s", "width", "height")
    produces = ("n_frames", "decoded_duration_s", "frames_jpeg", "frame_times", "audio_pcm")

    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self.native = NativeCalls("decode", config.isolation, config.decode_timeout_s, config.decode_attempts)

    def process_row(self, row: Row) -> None:
        source = row.pop("_media", None) or open_source(row["source_uri"])
        probed = ProbeResult(row["duration_s"], True, True, row["width"], row["height"], row["fps"], None, None)
        cfg = self.config
        clip = self.native.run(row["source_uri"], "engine.media.decode_encoded", cfg.decoder, source, probed,
                               fps=cfg.fps, max_frames=cfg.max_frames, max_side=cfg.max_frame_side,
                               sample_rate=AUDIO_SAMPLE_RATE, jpeg_quality=cfg.jpeg_quality)
        decoded = min(clip.video_duration_s, clip.audio_duration_s)
        row["decoded_duration_s"] = decoded
        if decoded < row["duration_s"] * (1 - cfg.duration_tolerance):
            raise MediaError(
                "duration_mismatch",
                f"decoded video {clip.video_duration_s:.2f}s / audio {clip.audio_duration_s:.2f}s "
                f"vs container {row['duration_s']:.2f}s",
            )
        row.update(n_frames=len(clip.frames_jpeg), frames_jpeg=clip.frames_jpeg, frame_times=clip.frame_times,
                   audio_pcm=clip.audio_pcm)


def audio_from_row(row: Row) -> np.ndarray:
    """The decoded audio of a row as float32 samples at AUDIO_SAMPLE_RATE."""
    return np.frombuffer(row["audio_pcm"], dtype="<f4")
