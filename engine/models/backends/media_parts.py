"""Clip media as OpenAI chat content parts: the one representation every backend accepts.

Frames travel as one `image_url` part per sampled frame (a JPEG data URL, in time order), the audio track as
one `input_audio` part (16 kHz mono, 16-bit WAV, base64). The HTTP backend posts them as they are (GPT-4o,
Gemini's OpenAI endpoint, a vLLM server all read this shape); the local backend decodes them back with the
inverses here. Anything that does not decode raises `MediaPartError` (a ValueError), which backends turn
into a per-request "bad_media" result.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import wave
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["SAMPLE_RATE", "MediaPartError", "audio_part", "decode_audio", "decode_frames", "frame_parts",
           "is_audio_part", "is_image_part", "media_key"]

SAMPLE_RATE = 16_000
_INT16_SCALE = 32768.0  # int16 full scale; decoding divides by it, so a round trip is within 1/32768


class MediaPartError(ValueError):
    """A content part whose media cannot be decoded (bad base64, not an image, wrong WAV format...)."""


# ---------------------------------------------------------------- encode


def frame_parts(frames_jpeg: list[bytes]) -> list[dict[str, Any]]:
    """One image_url part per JPEG frame, in the given (time) order."""
    return [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + _b64(frame)}}
            for frame in frames_jpeg]


def wav_bytes(pcm_f32le: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Float32 little-endian mono PCM (what a decoded clip holds) as a 16-bit mono WAV file."""
    samples = np.frombuffer(pcm_f32le, dtype="<f4")
    # Round to nearest; +1.0 would be 32768, one past int16's range, hence the clip.
    pcm16 = np.clip(np.rint(samples * _INT16_SCALE), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm16.tobytes())
    return buffer.getvalue()


def audio_part(pcm_f32le: bytes, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """One input_audio part: float32 little-endian mono PCM → 16-bit WAV (what chat APIs accept) → base64."""
    return {"type": "input_audio", "input_audio": {"data": _b64(wav_bytes(pcm_f32le, sample_rate)), "format": "wav"}}


def media_key(frames_jpeg: list[bytes], pcm: bytes | None) -> str:
    """sha256 of a clip's media, for `ChatRequest.media_key` (so cache keys skip the base64 payloads)."""
    digest = hashlib.sha256()
    # Length-prefixed, so that moving bytes from one frame to the next can never give the same key.
    for blob in [*frames_jpeg, pcm or b""]:
        digest.update(len(blob).to_bytes(8, "little"))
        digest.update(blob)
    digest.update(b"audio" if pcm is not None else b"no-audio")
    return digest.hexdigest()


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


# ---------------------------------------------------------------- decode


def is_image_part(part: dict[str, Any]) -> bool:
    return part.get("type") == "image_url"


def is_audio_part(part: dict[str, Any]) -> bool:
    return part.get("type") == "input_audio"


def decode_frames(parts: list[dict[str, Any]]) -> list[np.ndarray]:
    """image_url parts (data URLs; JPEG, or any format PIL reads) → HxWx3 uint8 RGB arrays, in order."""
    return [_decode_image(part) for part in parts]


def decode_audio(part: dict[str, Any]) -> np.ndarray:
    """An input_audio part holding 16 kHz mono 16-bit WAV → float32 samples in [-1, 1).

    Other rates are rejected rather than resampled: the engine always decodes at 16 kHz, so another rate
    means the part came from somewhere else and its assumptions should be looked at.
    """
    inner = part.get("input_audio")
    if not isinstance(inner, dict) or not isinstance(inner.get("data"), str):
        raise MediaPartError("input_audio part has no base64 'data'")
    if inner.get("format", "wav") != "wav":
        raise MediaPartError(f"input_audio format {inner.get('format')!r} is not supported, only 'wav'")
    try:
        with wave.open(io.BytesIO(_unb64(inner["data"])), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as err:
        raise MediaPartError(f"input_audio is not a readable WAV: {err}") from err
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        raise MediaPartError(f"input_audio must be {SAMPLE_RATE} Hz mono 16-bit, got {rate} Hz, "
                             f"{channels} channel(s), {8 * width}-bit")
    return (np.frombuffer(frames, dtype="<i2") / _INT16_SCALE).astype(np.float32)


def _decode_image(part: dict[str, Any]) -> np.ndarray:
    inner = part.get("image_url")
    url = inner.get("url") if isinstance(inner, dict) else None
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        # Fetching http(s) URLs is left to the HTTP backends' servers; locally only inline media exist.
        raise MediaPartError("image_url must be a base64 data URL")
    blob = _unb64(url.split(";base64,", 1)[1])
    try:
        with Image.open(io.BytesIO(blob)) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy: torch warns on read-only
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's ways of saying "not an image"
        raise MediaPartError(f"image_url does not hold a readable image: {err}") from err


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise MediaPartError(f"invalid base64 payload: {err}") from err
