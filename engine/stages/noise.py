"""Background-noise filter on the decoded audio: speech SNR with voice-activity detection (engine.core.snr)."""

from __future__ import annotations

import numpy as np

from engine.core.config import NoiseConfig
from engine.core.media import MediaError
from engine.core.schema import AUDIO_SAMPLE_RATE
from engine.core.snr import estimate_snr
from engine.stages.base import Row, RowStage
from engine.stages.decode import audio_from_row


def covered_audio(row: Row) -> np.ndarray:
    """The decoded audio where the audio track has sound: decode puts it on the video's clock, padding a late start
    with digital silence, which would read as a noise-free pause and inflate the SNR (e.g. 40 instead of 32 dB for
    a clip whose audio starts 0.28 s late)."""
    audio = audio_from_row(row)
    start = int(round(max(0.0, row.get("audio_offset_s") or 0.0) * AUDIO_SAMPLE_RATE))
    covered = row.get("audio_covered_s")
    end = audio.size if covered is None else min(audio.size, start + int(round(covered * AUDIO_SAMPLE_RATE)))
    return audio[start:end] if end > start else audio[:0]


class NoiseFilterStage(RowStage):
    """Rejects clips whose speech SNR is below `min_snr_db`. A clip in which the VAD finds no speech is judged by the
    contrast of its loudest moments against its background, so noise or silence alone is rejected (the detail says
    that no speech was found)."""

    name = "noise"
    requires = ("audio_pcm",)
    produces = ("snr_db",)

    def __init__(self, config: NoiseConfig) -> None:
        self.config = config

    def process_row(self, row: Row) -> None:
        audio = covered_audio(row)
        if audio.size == 0:
            raise MediaError("empty_audio", "audio track decoded to no samples")
        config = self.config
        estimate = estimate_snr(audio, AUDIO_SAMPLE_RATE, config.speech_prob, config.pause_prob, config.min_pause_s)
        row["snr_db"] = snr = estimate.snr_db
        if snr < config.min_snr_db:
            found = ("no speech found" if estimate.method == "no_speech"
                     else f"noise from {'pauses' if estimate.method == 'pauses' else 'the spectral floor'}")
            raise MediaError("excessive_noise", f"speech SNR {snr:.1f} dB < {config.min_snr_db} dB ({found})")
