"""Media access: container probing (PyAV) and the one-time decode of frames and audio (decord).

Both accept a local path or an in-memory file (bytes fetched from object storage), so remote clips
need no temporary files. Failures surface as MediaError with a machine-readable reason.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import av
import decord
import numpy as np
from PIL import Image

from engine import storage

MediaSource = str | io.BytesIO


class MediaError(Exception):
    """A clip that cannot be used; `reason` is the recorded reject_reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ProbeResult:
    duration_s: float | None
    has_video: bool
    has_audio: bool
    width: int | None
    height: int | None
    fps: float | None
    video_codec: str | None
    audio_codec: str | None


@dataclass(frozen=True)
class DecodedClip:
    frames: list[np.ndarray]  # HxWx3 uint8, already downscaled
    frame_times: list[float]
    audio: np.ndarray  # float32 mono at the requested rate
    video_duration_s: float
    audio_duration_s: float


def open_source(uri: str) -> MediaSource:
    """Local files are read in place; remote objects are fetched once into memory."""
    if not storage.is_remote(uri):
        return storage.strip_protocol(uri)
    fs = storage.filesystem(uri)
    with fs.open(storage.strip_protocol(uri), "rb") as handle:
        return io.BytesIO(handle.read())


def _rewind(source: MediaSource) -> MediaSource:
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source


def probe(source: MediaSource) -> ProbeResult:
    try:
        container = av.open(_rewind(source), mode="r")
    except av.FFmpegError as err:
        raise MediaError("unreadable_container", str(err)) from None
    with container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        return ProbeResult(
            duration_s=_duration(container, video, audio),
            has_video=video is not None,
            has_audio=audio is not None,
            width=video.codec_context.width if video else None,
            height=video.codec_context.height if video else None,
            fps=float(video.average_rate) if video and video.average_rate else None,
            video_codec=video.codec_context.name if video else None,
            audio_codec=audio.codec_context.name if audio else None,
        )


def _duration(container: av.container.InputContainer, *streams: av.stream.Stream | None) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    spans = [float(s.duration * s.time_base) for s in streams if s is not None and s.duration]
    return max(spans) if spans else None


def sample_times(duration_s: float, fps: float, max_frames: int) -> list[float]:
    """Frame times at `fps`, capped at `max_frames` spread uniformly; at least two (Qwen's temporal patch)."""
    count = min(max_frames, max(2, math.floor(duration_s * fps)))
    return [(k + 0.5) * duration_s / count for k in range(count)]


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Downscale to fit max_side, never upscale; even sizes, as video codecs and patchifiers prefer."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def decode(source: MediaSource, probed: ProbeResult, *, fps: float, max_frames: int, max_side: int,
           sample_rate: int) -> DecodedClip:
    """Decodes sampled frames and the whole audio track once; raises MediaError('decode_failed')."""
    try:
        audio = decord.AudioReader(_rewind(source), ctx=decord.cpu(0), sample_rate=sample_rate, mono=True)
        samples = audio[:].asnumpy().reshape(-1).astype(np.float32)
        width, height = scaled_size(probed.width or 2, probed.height or 2, max_side)
        reader = decord.VideoReader(_rewind(source), ctx=decord.cpu(0), width=width, height=height)
        frames, times, video_duration = _sample_frames(reader, fps, max_frames)
    except decord.DECORDError as err:
        raise MediaError("decode_failed", str(err).splitlines()[0][:300]) from None
    return DecodedClip(frames, times, samples, video_duration, len(samples) / sample_rate)


def _sample_frames(reader: decord.VideoReader, fps: float, max_frames: int) -> tuple[list, list[float], float]:
    count = len(reader)
    native_fps = reader.get_avg_fps() or 25.0
    if count == 0:
        raise MediaError("decode_failed", "no video frames")
    duration = count / native_fps
    times = sample_times(duration, fps, max_frames)
    indices = [min(count - 1, int(t * native_fps)) for t in times]
    batch = reader.get_batch(indices).asnumpy()
    return list(batch), [indices[i] / native_fps for i in range(len(indices))], duration


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
