"""Media access: container probing and the one-time decode of frames and audio (PyAV and decord).

Both accept a local path or an in-memory file (bytes fetched from object storage), so remote clips
need no temporary files. Failures surface as MediaError with a machine-readable reason. `NativeCalls`
runs them in a child process (engine.core.isolation), where a crash or a hang costs one clip.
The container and probe code is in engine.core.media_probe, the audio track's in engine.core.media_audio; the names
others use are exported here (`__all__`).

What real corpora need, and where it is handled:
- the picture as displayed: rotation (phone video) and sample aspect ratio (anamorphic MPEG-2) give the
  displayed width x height; frames come out upright at that shape;
- the audio track: the default-flagged one (else the first), each track's own declared length, its start
  relative to the video (audio placed on the video's clock: a late start is padded with silence, an early
  one trimmed), and a downmix that keeps dialogue (centre channel first, LFE dropped);
- frame times from the frames' own timestamps (variable frame rate);
- decord for the frames; PyAV where decord fails (its threaded decoder rejects some VP9, dmlc/decord#246) or
  silently misplaces them (MPEG program and transport streams). Audio is always PyAV's: decord can neither pick
  a track nor weight channels.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import av
import decord
import numpy as np
from PIL import Image

from engine.core import isolation
from engine.core.media_audio import decode_audio, on_video_clock
from engine.core.media_probe import (
    MediaError,
    MediaSource,
    ProbeResult,
    check_size,
    open_container,
    open_source,
    probe,
    rewind,
    stream_start,
    video_stream,
    whole_track,
)

# The media API: stages, trainers and `media.decoder` paths find these here, wherever they are defined
# (media_probe: containers and the probe; media_audio: the audio track; this module: frames and the whole decode).
__all__ = [
    "CHILD_PRELOAD", "DecodedClip", "EncodedClip", "MediaError", "MediaSource", "NativeCalls", "ProbeResult",
    "check_size", "decode", "decode_encoded", "decode_jpeg", "encode_clip", "encode_jpeg", "on_video_clock",
    "open_source", "probe", "sample_times", "scaled_size",
]

log = logging.getLogger(__name__)

# decord starts its messages with the time of day ("[16:55:03] "): left out, so a detail is the same every run.
_DECORD_CLOCK = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
# What the child process imports before its first call, so that the first clip's time limit is not spent on it.
CHILD_PRELOAD = ("engine.core.media",)
Decoder = Literal["decord", "pyav"]
# Containers whose frames decord gets wrong without failing: in MPEG program and transport streams (no index, seeks
# are byte guesses) it starts MPEG-1/2 video a GOP late, 0.48 s at broadcast's 12 frames, and says nothing.
_DECORD_MISSEEKS = frozenset({"mpeg", "mpegts", "mpegvideo"})


@dataclass(frozen=True)
class DecodedClip:
    frames: list[np.ndarray]  # HxWx3 uint8, upright, already downscaled
    frame_times: list[float]  # seconds from the first frame, the frames' own timestamps
    audio: np.ndarray  # float32 mono at the requested rate, sample 0 at the first frame's time
    video_duration_s: float
    audio_duration_s: float  # decoded audio, before it is placed on the video's clock
    audio_offset_s: float = 0.0  # audio start minus video start: padded with silence (> 0) or trimmed (< 0)
    decoder: Decoder = "decord"  # what decoded the frames


# ---- decode --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedClip:
    """A decoded clip as a row holds it: JPEG frames and little-endian float32 PCM."""

    frames_jpeg: list[bytes]
    frame_times: list[float]
    audio_pcm: bytes
    video_duration_s: float
    audio_duration_s: float
    audio_offset_s: float = 0.0
    decoder: Decoder = "decord"


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
                       clip.audio.astype("<f4").tobytes(), clip.video_duration_s, clip.audio_duration_s,
                       clip.audio_offset_s, clip.decoder)


def sample_times(duration_s: float, fps: float, max_frames: int) -> list[float]:
    """Frame times at `fps`, capped at `max_frames` spread uniformly; at least two (Qwen's temporal patch)."""
    count = min(max_frames, max(2, math.floor(duration_s * fps)))
    return [(k + 0.5) * duration_s / count for k in range(count)]


def frame_indices(starts: np.ndarray, times: list[float]) -> list[int]:
    """For each time, the frame on screen then: the last one starting at or before it (frame starts ascending;
    a tenth of a millisecond of slack for timestamps stored as float32)."""
    return [max(0, int(np.searchsorted(starts, t + 1e-4, side="right")) - 1) for t in times]


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Downscale to fit max_side, never upscale; even sizes, as video codecs and patchifiers prefer."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def decode(source: MediaSource, probed: ProbeResult, *, fps: float, max_frames: int, max_side: int,
           sample_rate: int) -> DecodedClip:
    """Sampled upright frames at the displayed aspect (probed.width x probed.height, downscaled) and the chosen
    audio track on the video's clock, decoded once; raises MediaError('decode_failed')."""
    width, height = scaled_size(probed.width or 2, probed.height or 2, max_side)
    audio = decode_audio(source, sample_rate)
    if audio.container in _DECORD_MISSEEKS:
        decoder: Decoder = "pyav"
        frames, times, video_duration = _pyav_frames(source, width, height, fps, max_frames)
    else:
        try:
            decoder = "decord"
            frames, times, video_duration = _decord_frames(source, width, height, fps, max_frames)
        except _DecordFailed as err:
            log.info("decord failed (%s); decoding the frames with PyAV", err)
            decoder = "pyav"
            frames, times, video_duration = _pyav_frames(source, width, height, fps, max_frames, f"; decord: {err}")
    offset = audio.start_s - audio.video_start_s
    return DecodedClip(frames, times, on_video_clock(audio.samples, offset, sample_rate), video_duration,
                       audio.samples.size / sample_rate, offset, decoder)


class _DecordFailed(Exception):
    """decord could not decode the frames: the PyAV path is tried."""


def _decord_frames(source: MediaSource, width: int, height: int, fps: float,
                   max_frames: int) -> tuple[list[np.ndarray], list[float], float]:
    """decord scales to the displayed size and turns the picture upright itself; frame times are its timestamps
    from the stream's start."""
    try:
        reader = decord.VideoReader(rewind(source), ctx=decord.cpu(0), width=width, height=height)
        count = len(reader)
        if count == 0:
            raise _DecordFailed("no video frames")
        stamps = reader.get_frame_timestamp(list(range(count))).astype(np.float64)
        end = _video_end(stamps[:, 0], float(stamps[-1, 1]), reader.get_avg_fps())
        indices = frame_indices(stamps[:, 0], sample_times(end, fps, max_frames))
        batch = reader.get_batch(indices).asnumpy()
    except decord.DECORDError as err:
        raise _DecordFailed(_DECORD_CLOCK.sub("", str(err).splitlines()[0])[:300]) from None
    return list(batch), [float(stamps[i, 0]) for i in indices], end


def _video_end(starts: np.ndarray, last_end: float, average_fps: float | None) -> float:
    """The end of the last frame; a container that stores no frame durations (flv) gets the average one."""
    return last_end if last_end > starts[-1] else float(starts[-1]) + 1 / (average_fps or 25.0)


def _pyav_frames(source: MediaSource, width: int, height: int, fps: float, max_frames: int,
                 context: str = "") -> tuple[list[np.ndarray], list[float], float]:
    """Two passes: the packets' timestamps (no decoding) give the end of the video, then one decode keeps the frames
    on screen at the sampled times. `context` is added to a failure's detail."""
    try:
        with open_container(source, "decode_failed") as container:
            end = _video_packets_end(container)
            times = sample_times(end, fps, max_frames)
        with open_container(source, "decode_failed") as container:
            video = video_stream(container)
            picked = _frames_on_screen(container.decode(video), stream_start(video), times)
            frames = [_upright(frame, width, height) for frame in picked]
    except av.FFmpegError as err:
        raise MediaError("decode_failed", f"pyav: {err}{context}"[:300]) from None
    origin = stream_start(video)
    return frames, [float(frame.time) - origin for frame in picked], end


def _video_packets_end(container: av.container.InputContainer) -> float:
    """The end of the video's last frame, from the start of its first, by the packets' timestamps."""
    video = video_stream(container)
    if video is None:
        raise MediaError("decode_failed", "no video track")
    origin, base = stream_start(video), video.time_base
    packets = sorted((p.pts, p.duration or 0) for p in whole_track(container, video) if p.pts is not None)
    if not packets:
        raise MediaError("decode_failed", "no video frames")
    starts = np.array([float(pts * base) - origin for pts, _ in packets])
    return _video_end(starts, starts[-1] + float(packets[-1][1] * base), float(video.average_rate or 0))


def _frames_on_screen(decoded: Iterator[av.VideoFrame], origin: float, times: list[float]) -> list[av.VideoFrame]:
    """For each time (ascending), the last frame starting at or before it (the first frame for a time before it)."""
    picked: list[av.VideoFrame] = []
    previous = None
    for frame in decoded:
        start = float(frame.time) - origin if frame.time is not None else math.inf
        while len(picked) < len(times) and start > times[len(picked)] + 1e-4:
            picked.append(previous if previous is not None else frame)
        if len(picked) == len(times):
            break
        previous = frame
    if previous is None and not picked:
        raise MediaError("decode_failed", "no video frames decoded")
    return picked + [previous] * (len(times) - len(picked))


def _upright(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """RGB at width x height as displayed: scaled in the coded orientation, then turned by the display matrix."""
    turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns, as np.rot90 counts them
    coded = (height, width) if turns % 2 else (width, height)
    rgb = frame.to_ndarray(format="rgb24", width=coded[0], height=coded[1])
    return np.ascontiguousarray(np.rot90(rgb, turns))


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
