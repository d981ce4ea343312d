"""Near-duplicate fingerprints of one clip and the distance between two (engine.dataset.neardup finds the pairs and
the groups; engine.stages.fingerprint computes the fingerprints where the media is decoded): 8x8 average hashes
of key frames, and the Chromaprint items of the audio."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from engine.core.schema import AUDIO_SAMPLE_RATE

KEY_FRAMES = 8
HASH_BYTES = 8  # an 8x8 average hash
# Chromaprint is told that the 16 kHz audio runs at 4 kHz. It analyses at 11025 Hz in 4096-sample frames with a hop of
# 1365, which at the real rate would give 8 items a second and none at all for a 2 s clip (its classifiers span 16
# frames); told 4 kHz, it sees each second as four, gives ~32 items a real second, and its chroma band (28-3520 Hz)
# covers speech from 112 Hz to 8 kHz.
CHROMAPRINT_RATE = AUDIO_SAMPLE_RATE // 4
_ITEM_HOP = 1365 * CHROMAPRINT_RATE / 11025  # audio samples per item
# finish() drops the last partial block of 24 items, so silence is fed after the audio to push it out; the last
# items then see that silence (measured: 18-19 items), so they are cut.
_PAD_SAMPLES = 2 * AUDIO_SAMPLE_RATE
_TAIL_ITEMS = 20


# ---------------------------------------------------------------- fingerprints (per clip, in the media task)


def frame_hashes(frames_jpeg: Sequence[bytes]) -> bytes:
    """8x8 average hashes (imagehash) of up to KEY_FRAMES frames spread over the clip, 8 bytes each, in time order.

    Average hashes rather than DCT (pHash): on low-texture frames (a face on a plain background) the DCT signs flip
    under a 10% crop (14-24 of 64 bits measured between a clip and its cropped copy; average hash: <= 7)."""
    import imagehash

    if not frames_jpeg:
        return b""
    picks = np.linspace(0, len(frames_jpeg) - 1, min(KEY_FRAMES, len(frames_jpeg))).round().astype(int)
    return b"".join(np.packbits(imagehash.average_hash(_small_gray(frames_jpeg[i])).hash).tobytes() for i in picks)


def _small_gray(jpeg: bytes) -> Image.Image:
    """The frame decoded at 1/8 of its size where the JPEG allows (libjpeg's DCT scaling: ~5x faster than a full
    decode), in grayscale: all the 8x8 hash needs."""
    image = Image.open(io.BytesIO(jpeg))
    image.draft("L", (image.width // 8, image.height // 8))
    return image


def audio_fingerprint(audio: np.ndarray) -> bytes:
    """Chromaprint items of 16 kHz mono float audio (little-endian uint32), only those that saw the audio alone."""
    import chromaprint  # pyacoustid's binding of libchromaprint (the system library; see the Makefile)

    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    printer = chromaprint.Fingerprinter()
    printer.start(CHROMAPRINT_RATE, 1)
    printer.feed(np.concatenate([pcm, np.zeros(_PAD_SAMPLES, "<i2")]).tobytes())
    items, _ = chromaprint.decode_fingerprint(printer.finish())
    clean = max(0, int(pcm.size / _ITEM_HOP) - _TAIL_ITEMS)
    return np.asarray(items[:clean], dtype=np.int64).astype("<u4").tobytes()


def items_per_second() -> float:
    return AUDIO_SAMPLE_RATE / _ITEM_HOP


# ---------------------------------------------------------------- comparing two clips


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint8 array's last axis, summed over that axis."""
    return np.unpackbits(values, axis=-1).sum(axis=-1)


def frame_distance(a: bytes, b: bytes) -> float:
    """Median over one clip's key frames of the Hamming distance to the other clip's closest key frame, from the side
    that matches better (a trimmed copy's frames all lie in the original, not the other way round)."""
    fa, fb = (np.frombuffer(x, np.uint8).reshape(-1, HASH_BYTES) for x in (a, b))
    if not len(fa) or not len(fb):
        return float(HASH_BYTES * 8)
    bits = _popcount(fa[:, None, :] ^ fb[None, :, :])
    return float(min(np.median(bits.min(axis=1)), np.median(bits.min(axis=0))))


def audio_ber(a: bytes, b: bytes, max_shift: int, min_overlap: int) -> float:
    """Bit error rate of two Chromaprint item sequences at their best alignment within +-max_shift items, over at least
    min_overlap aligned items (1.0 when no alignment has that many). Tried: the offsets at which the two share an item
    value (and one either side), as Chromaprint's own matcher aligns; every offset when they share none."""
    x, y = np.frombuffer(a, "<u4"), np.frombuffer(b, "<u4")
    _, in_x, in_y = np.intersect1d(x, y, return_indices=True)
    shared = {int(d) + k for d in in_x.astype(int) - in_y.astype(int) for k in (-1, 0, 1)}
    shifts = sorted(s for s in shared if abs(s) <= max_shift) if shared else range(-max_shift, max_shift + 1)
    best = 1.0
    for shift in shifts:
        u, v = x[max(0, shift):], y[max(0, -shift):]
        n = min(u.size, v.size)
        if n >= min_overlap:
            best = min(best, float(_popcount((u[:n] ^ v[:n]).view(np.uint8).reshape(n, 4)).sum()) / (32 * n))
    return best
