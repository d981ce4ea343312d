"""Background-noise filter on the decoded audio."""

from __future__ import annotations

from engine.config import NoiseConfig
from engine.media import MediaError
from engine.schema import AUDIO_SAMPLE_RATE
from engine.snr import estimate_snr_db
from engine.stages.base import Row, RowStage
from engine.stages.decode import audio_from_row


class NoiseFilterStage(RowStage):
    name = "noise"
    requires = ("audio_pcm",)
    produces = ("snr_db",)

    def __init__(self, config: NoiseConfig) -> None:
        self.config = config

    def process_row(self, row: Row) -> None:
        audio = audio_from_row(row)
        if audio.size == 0:
            raise MediaError("empty_audio", "audio track decoded to no samples")
        row["snr_db"] = snr = estimate_snr_db(audio, AUDIO_SAMPLE_RATE, self.config.frame_ms)
        if snr < self.config.min_snr_db:
            raise MediaError("excessive_noise", f"speech SNR {snr:.1f} dB < {self.config.min_snr_db} dB")
