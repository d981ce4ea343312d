import numpy as np
import pytest

from engine.snr import estimate_snr_db, frame_powers

SR = 16000


def _speechlike(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Bursts of tone (syllables) separated by gaps: what makes speech SNR measurable."""
    t = np.arange(int(seconds * SR)) / SR
    gate = (np.sin(2 * np.pi * 2.0 * t) > 0.2).astype(np.float64)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * gate).astype(np.float32)


def test_frame_powers_by_hand():
    audio = np.array([1, 1, 0, 0, 2, 2], dtype=np.float32)
    # frames of 2 samples (frame_ms chosen so n = 2 at 1 kHz)
    np.testing.assert_allclose(frame_powers(audio, 1000, 2.0), [1.0, 0.0, 4.0])


@pytest.mark.parametrize("true_db", [0.0, 10.0, 20.0, 30.0])
def test_estimate_tracks_the_burst_to_noise_ratio(true_db):
    rng = np.random.default_rng(0)
    speech = _speechlike(4.0, rng)
    burst_power = 0.3**2 / 2  # power of the tone while it sounds
    noise = rng.normal(0, np.sqrt(burst_power / 10 ** (true_db / 10)), speech.size).astype(np.float32)
    estimate = estimate_snr_db(speech + noise, SR)
    assert abs(estimate - true_db) < 2.0, estimate


def test_pure_noise_is_low_and_clean_speech_high():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.25, SR * 3).astype(np.float32)
    assert estimate_snr_db(noise, SR) < 0
    # Digital silence between bursts sits on the -100 dBFS floor; the loudest frames hold the whole tone
    # (power 0.3^2 / 2 = 0.045): 10 log10(0.045 / 1e-10) = 86.53 dB.
    assert estimate_snr_db(_speechlike(3.0, rng), SR) == pytest.approx(10 * np.log10(0.045 / 1e-10), abs=0.05)


def test_empty_audio_raises():
    with pytest.raises(ValueError):
        estimate_snr_db(np.array([], dtype=np.float32), SR)
