"""Speech SNR with voice-activity detection (Silero VAD, as shipped with faster-whisper).

SNR = 10 log10((P_speech - P_noise) / P_noise), with P_speech the mean power of the 32 ms windows that the VAD
calls speech (speech plus the noise under it) and P_noise the background's power, taken
- from the pauses: windows the VAD calls non-speech, at least two windows away from speech, when they add up to
  `min_pause_s`; the noise is observed alone there, so the estimate needs no model of it;
- else from the spectral floor (continuous speech without pauses, or noise the VAD takes for speech such as
  babble): in each frequency band the mean of the quietest tenth of the (3 x 3 smoothed) STFT frames. Speech
  leaves every band quiet now and then even when it never pauses, so the floor is the noise's; for stationary
  noise that floor lies a fixed ratio below the noise's mean power, FLOOR_BIAS_DB, measured on white Gaussian
  noise (floor_bias_db() re-measures it) and divided out.
Calibrated in tests/engine/test_snr.py on espeak-ng speech mixed with white, pink and babble noise at known SNR
(speech power over its active frames against the noise's power). A clip in which the VAD finds no speech
(`no_speech`: noise alone, silence, or a sound the VAD does not take for speech such as laughter) gets the contrast
of its loudest tenth of windows against its spectral floor: about 0 dB or less for noise or silence, high for
sounds over a quiet background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SAMPLE_RATE = 16_000  # Silero VAD's rate (and the engine's)
WINDOW = 512  # Silero VAD's window at 16 kHz: 32 ms
MAX_SNR_DB = 100.0
_FLOOR = 1e-10  # -100 dBFS: digital silence in the pauses would otherwise give an infinite SNR
_GUARD = 2  # windows next to speech are not pauses: the VAD's decision lags the speech's edges
# Spectral floor: STFT of 512-sample Hann frames, hop 256, power smoothed over 3 frames x 3 bins, the quietest 10%.
_NFFT, _HOP, _SMOOTH, _QUIET = 512, 256, 3, 0.1
FLOOR_BIAS_DB = -3.93  # floor / mean power of white Gaussian noise under the above (floor_bias_db(), 20 x 10 s)

SnrMethod = Literal["pauses", "floor", "no_speech"]


@dataclass(frozen=True)
class SnrEstimate:
    snr_db: float
    method: SnrMethod
    speech_s: float  # duration of the windows taken as speech
    pause_s: float  # duration of the windows taken as pauses (noise alone)


def estimate_snr(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, speech_prob: float = 0.5,
                 pause_prob: float = 0.2, min_pause_s: float = 0.25) -> SnrEstimate:
    """The speech SNR of 16 kHz mono audio; raises ValueError on empty audio or another sample rate."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"Silero VAD runs at {SAMPLE_RATE} Hz, got {sample_rate} Hz")
    if audio.size == 0:
        raise ValueError("no audio samples")
    probs = speech_probabilities(audio)
    powers = window_powers(audio)
    speech = probs >= speech_prob
    pauses = (probs < pause_prob) & ~_near(speech, _GUARD)
    speech_s, pause_s = float(speech.sum() * WINDOW / SAMPLE_RATE), float(pauses.sum() * WINDOW / SAMPLE_RATE)
    if not speech.any():
        loudest = float(np.sort(powers)[-max(1, powers.size // 10):].mean())
        return SnrEstimate(snr_from_powers(loudest, spectral_noise_floor(audio)), "no_speech", 0.0, pause_s)
    if pause_s >= min_pause_s:
        noise, method = float(powers[pauses].mean()), "pauses"
    else:
        noise, method = spectral_noise_floor(audio), "floor"
    return SnrEstimate(snr_from_powers(float(powers[speech].mean()), noise), method, speech_s, pause_s)


def snr_from_powers(speech_plus_noise: float, noise: float) -> float:
    """10 log10((S+N - N) / N), clipped to [-MAX_SNR_DB, MAX_SNR_DB]."""
    noise = max(noise, _FLOOR)
    excess = speech_plus_noise - noise
    if excess <= noise * 10 ** (-MAX_SNR_DB / 10):
        return -MAX_SNR_DB
    return float(np.clip(10 * np.log10(excess / noise), -MAX_SNR_DB, MAX_SNR_DB))


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero VAD's speech probability for each 512-sample window (the last one zero-padded)."""
    from faster_whisper.vad import get_vad_model  # onnxruntime session, loaded once per process

    padded = np.pad(audio.astype(np.float32), (0, -audio.size % WINDOW))
    return np.asarray(get_vad_model()(padded), dtype=np.float64).reshape(-1)


def window_powers(audio: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean power of each `window`-sample window (the last one zero-padded, as for the VAD)."""
    padded = np.pad(audio.astype(np.float64), (0, -audio.size % window))
    return np.mean(np.square(padded.reshape(-1, window)), axis=1)


def spectral_noise_floor(audio: np.ndarray) -> float:
    """The background's mean power from the quietest moments of each frequency band, bias-corrected."""
    audio = audio.astype(np.float64)
    if audio.size < _NFFT + _HOP * (_SMOOTH - 1):  # too short for a floor: the quietest window instead
        return float(window_powers(audio, min(WINDOW, audio.size)).min())
    power = _smoothed_spectrogram(audio)
    quiet = max(1, int(power.shape[0] * _QUIET))
    floor = np.sort(power, axis=0)[:quiet].mean(axis=0)
    share = floor.sum() / max(power.mean(axis=0).sum(), _FLOOR)  # the floor's share of the clip's power
    return float(np.mean(np.square(audio)) * share / 10 ** (FLOOR_BIAS_DB / 10))


def floor_bias_db(seconds: float = 10.0, runs: int = 20, seed: int = 0) -> float:
    """Re-measures FLOOR_BIAS_DB: the uncorrected floor of white Gaussian noise against its power, in dB."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(runs):
        noise = rng.normal(0.0, 0.1, int(seconds * SAMPLE_RATE))
        ratios.append(spectral_noise_floor(noise) * 10 ** (FLOOR_BIAS_DB / 10) / np.mean(np.square(noise)))
    return float(10 * np.log10(np.mean(ratios)))


def _smoothed_spectrogram(audio: np.ndarray) -> np.ndarray:
    """(frames, bins) STFT power, each value the mean of its 3 x 3 neighbourhood (frames x bins, valid in time)."""
    count = (audio.size - _NFFT) // _HOP + 1
    frames = audio[np.arange(_NFFT)[None, :] + _HOP * np.arange(count)[:, None]] * np.hanning(_NFFT)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    cumulative = np.cumsum(np.vstack([np.zeros((1, power.shape[1])), power]), axis=0)
    power = (cumulative[_SMOOTH:] - cumulative[:-_SMOOTH]) / _SMOOTH
    padded = np.pad(power, ((0, 0), (1, 1)), mode="edge")
    return (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3


def _near(mask: np.ndarray, reach: int) -> np.ndarray:
    """True where a True of `mask` lies within `reach` windows."""
    return np.convolve(mask.astype(np.int64), np.ones(2 * reach + 1, dtype=np.int64), mode="same") > 0
