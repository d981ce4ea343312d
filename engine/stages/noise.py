"""Background-noise filter on the decoded audio: speech SNR with voice-activity detection (engine.snr)."""

from __future__ import annotations

from engine.config import NoiseConfig
from engine.media import MediaError
from engine.schema import AUDIO_SAMPLE_RATE
from engine.snr import estimate_snr
from engine.stages.base import Row, RowStage
from engine.stages.decode import audio_from_row


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
        audio = audio_from_row(row)
        if audio.size == 0:
            raise MediaError("empty_audio", "audio track decoded to no samples")
        config = self.config
        estimate = estimate_snr(audio, AUDIO_SAMPLE_RATE, config.speech_prob, config.pause_prob, config.min_pause_s)
        row["snr_db"] = snr = estimate.snr_db
        if snr < config.min_snr_db:
            found = ("no speech found" if estimate.method == "no_speech"
                     else f"noise from {'pauses' if estimate.method == 'pauses' else 'the spectral floor'}")
            raise MediaError("excessive_noise", f"speech SNR {snr:.1f} dB < {config.min_snr_db} dB ({found})")
