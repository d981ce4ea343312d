"""Media access: container probing (PyAV) and the one-time decode of frames and audio (decord).

Both accept a local path or an in-memory file (bytes fetched from object storage), so remote clips
need no temporary files. Failures surface as MediaError with a machine-readable reason. `NativeCalls`
runs them in a child process (engine.isolation), where a crash or a hang costs one clip.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

import av
import decord
import numpy as np
from PIL import Image

from engine import isolation, storage

log = logging.getLogger(__name__)

MediaSource = str | io.BytesIO
# decord starts its messages with the time of day ("[16:55:03] "): left out, so a detail is the same every run.
_DECORD_CLOCK = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
# What the child process imports before its first call, so that the first clip's time limit is not spent on it.
CHILD_PRELOAD = ("engine.media",)


class MediaError(Exception):
    """A clip that cannot be used; `reason` is the recorded reject_reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple:  # from the media child intact: Exception pickles only str(self)
        return type(self), (self.reason, self.detail), self.__dict__


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


def source_size(uri: str) -> int:
    """The clip's size in bytes from its filesystem's metadata, without reading it."""
    path = storage.strip_protocol(uri)
    return storage.filesystem(uri).size(path) if storage.is_remote(uri) else os.path.getsize(path)


def check_size(uri: str, max_bytes: int) -> None:
    """MediaError('too_large') for a clip over `max_bytes` (0: no limit), told before any of it is fetched: a
    remote clip is held in memory whole."""
    size = source_size(uri) if max_bytes else None
    if size is not None and size > max_bytes:
        raise MediaError("too_large", f"{size} bytes > max_bytes {max_bytes}")


def open_source(uri: str) -> MediaSource:
    """Local files are read in place; remote objects are fetched once into memory (see check_size)."""
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


@dataclass(frozen=True)
class EncodedClip:
    """A decoded clip as a row holds it: JPEG frames and little-endian float32 PCM."""

    frames_jpeg: list[bytes]
    frame_times: list[float]
    audio_pcm: bytes
    video_duration_s: float
    audio_duration_s: float


def decode_encoded(decoder: str, source: MediaSource, probed: ProbeResult, *, fps: float, max_frames: int,
                   max_side: int, sample_rate: int, jpeg_quality: int) -> EncodedClip:
    """`decoder` (package.module.function with decode's signature) with its frames JPEG-encoded. Runs in the
    media child, so that what comes back through the pipe is the compressed frames (7 KB instead of 230 KB a
    320x240 frame at quality 90)."""
    clip = isolation.resolve(decoder)(source, probed, fps=fps, max_frames=max_frames, max_side=max_side,
                                      sample_rate=sample_rate)
    return encode_clip(clip, jpeg_quality)


def encode_clip(clip: DecodedClip, jpeg_quality: int) -> EncodedClip:
    return EncodedClip([encode_jpeg(frame, jpeg_quality) for frame in clip.frames], clip.frame_times,
                       clip.audio.astype("<f4").tobytes(), clip.video_duration_s, clip.audio_duration_s)


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
        raise MediaError("decode_failed", _DECORD_CLOCK.sub("", str(err).splitlines()[0])[:300]) from None
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


@dataclass(frozen=True)
class NativeCalls:
    """Calls into PyAV/decord for one stage: in the process's media child (`process`) or in this process
    (`none`). A child that dies or overruns `timeout_s` costs only the call; the call is tried again in a
    fresh child, `attempts` times in all, then the clip is MediaError('<stage>_crashed' / '<stage>_timeout')."""

    stage: str
    isolation: Literal["process", "none"]
    timeout_s: float
    attempts: int

    def run(self, clip: str, function: str, *args: Any, **kwargs: Any) -> Any:
        """`function` (package.module.name) applied to the arguments, which travel to the child by pickle;
        `clip` names the clip in log lines."""
        if self.isolation == "none":
            return isolation.resolve(function)(*args, **kwargs)
        child = isolation.shared_child(CHILD_PRELOAD)
        for attempt in range(1, self.attempts + 1):
            try:
                return child.call(function, args, kwargs, self.timeout_s)
            except (isolation.ChildCrashed, isolation.ChildTimedOut) as err:
                kind = "crashed" if isinstance(err, isolation.ChildCrashed) else "timeout"
                failure = MediaError(f"{self.stage}_{kind}", f"{err}, attempt {attempt} of {self.attempts}")
            log.warning("%s stage, clip %s: %s", self.stage, clip, failure)
        raise failure


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
