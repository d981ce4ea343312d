"""Media access: container probing and the one-time decode of frames and audio (PyAV and decord).

Both accept a local path or an in-memory file (bytes fetched from object storage), so remote clips
need no temporary files. Failures surface as MediaError with a machine-readable reason. `NativeCalls`
runs them in a child process (engine.isolation), where a crash or a hang costs one clip.

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
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
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
# Downmix weights by channel name before normalising to a sum of 1: dialogue sits in the centre channel of
# multichannel mixes, music and effects in the others, and the LFE carries no speech; surrounds weigh half a front
# channel. Names not listed (wide, top, and the unnamed channels of an unknown layout) weigh as much as a front.
_DOWNMIX_WEIGHTS = {"FC": 1.0, "FL": 0.5, "FR": 0.5, "LFE": 0.0, "LFE2": 0.0,
                    "BL": 0.25, "BR": 0.25, "SL": 0.25, "SR": 0.25, "BC": 0.25}
_UNLISTED_WEIGHT = 0.5
Decoder = Literal["decord", "pyav"]
# Containers whose frames decord gets wrong without failing: in MPEG program and transport streams (no index, seeks
# are byte guesses) it starts MPEG-1/2 video a GOP late, 0.48 s at broadcast's 12 frames, and says nothing.
_DECORD_MISSEEKS = frozenset({"mpeg", "mpegts", "mpegvideo"})


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
    duration_s: float | None  # the container's
    has_video: bool
    has_audio: bool
    width: int | None  # displayed: sample aspect ratio and rotation applied
    height: int | None
    fps: float | None
    video_codec: str | None
    audio_codec: str | None  # of the chosen audio track
    rotation: int = 0  # degrees clockwise the coded picture is turned for display: 0, 90, 180 or 270
    video_track_s: float | None = None  # each track's own declared length; None where the container has none
    audio_track_s: float | None = None
    audio_track: int | None = None  # the chosen one, counted among the audio tracks
    audio_channels: int | None = None


@dataclass(frozen=True)
class DecodedClip:
    frames: list[np.ndarray]  # HxWx3 uint8, upright, already downscaled
    frame_times: list[float]  # seconds from the first frame, the frames' own timestamps
    audio: np.ndarray  # float32 mono at the requested rate, sample 0 at the first frame's time
    video_duration_s: float
    audio_duration_s: float  # decoded audio, before it is placed on the video's clock
    audio_offset_s: float = 0.0  # audio start minus video start: padded with silence (> 0) or trimmed (< 0)
    decoder: Decoder = "decord"  # what decoded the frames


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


def _open(source: MediaSource, reason: str) -> av.container.InputContainer:
    try:
        return av.open(_rewind(source), mode="r")
    except av.FFmpegError as err:
        raise MediaError(reason, str(err)) from None


# ---- probe ---------------------------------------------------------------------------------------------------
def probe(source: MediaSource) -> ProbeResult:
    with _open(source, "unreadable_container") as container:
        video, audio = video_stream(container), audio_stream(container)
        rotation = _rotation(container, video) if video else 0
        width, height = display_size(video, rotation) if video else (None, None)
        return ProbeResult(
            duration_s=_duration(container, video, audio),
            has_video=video is not None,
            has_audio=audio is not None,
            width=width,
            height=height,
            fps=float(video.average_rate) if video and video.average_rate else None,
            video_codec=video.codec_context.codec.canonical_name if video else None,  # as ffprobe names them
            audio_codec=audio.codec_context.codec.canonical_name if audio else None,
            rotation=rotation,
            video_track_s=_track_length(video),
            audio_track_s=_track_length(audio),
            audio_track=list(container.streams.audio).index(audio) if audio else None,
            audio_channels=audio.codec_context.channels if audio else None,
        )


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video track that is a moving picture (not the cover art of an audio file)."""
    pictures = (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic)
    return next(pictures, None)


def audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    """The audio track flagged default (a dubbed film's original language, a broadcast's main mix), else the
    first."""
    tracks = list(container.streams.audio)
    return next((s for s in tracks if s.disposition & av.stream.Disposition.default), tracks[0] if tracks else None)


def _rotation(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> int:
    """From the first frame's display matrix (PyAV exposes it on frames only). A stream that does not decode
    here is left to the decode stage to judge."""
    try:
        frame = next(container.decode(video), None)
    except av.FFmpegError:
        return 0
    return _clockwise(frame.rotation) if frame is not None else 0


def _clockwise(counter_clockwise: float) -> int:
    """PyAV's frame.rotation (the display matrix's angle, counter-clockwise) as 0/90/180/270 clockwise."""
    return round(-counter_clockwise / 90) % 4 * 90


def display_size(video: av.video.stream.VideoStream, rotation: int) -> tuple[int, int]:
    width, height = video.codec_context.width, video.codec_context.height
    aspect = video.sample_aspect_ratio or video.codec_context.sample_aspect_ratio
    if aspect and aspect > 0:
        width = round(width * Fraction(aspect))
    return (height, width) if rotation in (90, 270) else (width, height)


def _duration(container: av.container.InputContainer, *streams: av.stream.Stream | None) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    spans = [_track_length(s) for s in streams]
    return max((s for s in spans if s), default=None)


def _track_length(stream: av.stream.Stream | None) -> float | None:
    return float(stream.duration * stream.time_base) if stream is not None and stream.duration else None


def _start(stream: av.stream.Stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


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
    audio = _decode_audio(source, sample_rate)
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


def on_video_clock(audio: np.ndarray, offset_s: float, sample_rate: int) -> np.ndarray:
    """The audio with sample 0 at the first frame's time: a late start padded with silence, an early one cut."""
    lead = round(offset_s * sample_rate)
    if lead > 0 and audio.size:
        return np.concatenate([np.zeros(lead, dtype=np.float32), audio])
    return audio[-lead:] if lead < 0 else audio


@dataclass(frozen=True)
class _AudioTrack:
    samples: np.ndarray  # mono at the requested rate
    start_s: float  # the time of its first sample
    video_start_s: float
    container: str  # PyAV's name of the container format


def _decode_audio(source: MediaSource, sample_rate: int) -> _AudioTrack:
    """The chosen track downmixed to mono at sample_rate."""
    with _open(source, "decode_failed") as container:
        video, track = video_stream(container), audio_stream(container)
        if track is None:
            raise MediaError("decode_failed", "no audio track")
        try:
            samples, first = _mono(_decoded(_whole_track(container, track)), sample_rate)
        except av.FFmpegError as err:
            raise MediaError("decode_failed", f"audio: {err}") from None
        start = first if first is not None else _start(track)
        return _AudioTrack(samples, start, _start(video) if video else start, container.format.name)


def _whole_track(container: av.container.InputContainer, stream: av.stream.Stream) -> Iterator[av.Packet]:
    """The stream's packets to its end (the last one empty, to flush its decoder). MediaError when the file ends
    before the last packet its index lists (mp4/mov list every packet up front: a file cut short), which the
    demuxer itself only logs ("partial file")."""
    listed, delivered = len(stream.index_entries), 0
    for packet in container.demux(stream):
        delivered += bool(packet.size)
        yield packet
    if delivered < listed:
        raise MediaError("decode_failed", f"truncated: the {stream.type} track ends at packet {delivered} of the "
                                          f"{listed} its index lists")


def _decoded(packets: Iterator[av.Packet]) -> Iterator[Any]:
    for packet in packets:
        yield from packet.decode()


def _mono(frames: Iterator[av.AudioFrame], sample_rate: int) -> tuple[np.ndarray, float | None]:
    """The frames resampled to sample_rate and downmixed, and the first one's time. A new resampler wherever the
    format, layout or rate changes (a broadcast switching from stereo to 5.1)."""
    chunks: list[np.ndarray] = []
    resampler, setup, first = None, None, None
    for frame in frames:
        if (frame.format.name, frame.layout.name, frame.sample_rate) != setup:
            chunks += _downmixed(resampler.resample(None)) if resampler else []
            resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sample_rate)
            setup = (frame.format.name, frame.layout.name, frame.sample_rate)
        first = frame.time if first is None else first
        chunks += _downmixed(resampler.resample(frame))
    chunks += _downmixed(resampler.resample(None)) if resampler else []
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), first


def _downmixed(frames: list[av.AudioFrame]) -> list[np.ndarray]:
    return [downmix(frame.to_ndarray(), [channel.name for channel in frame.layout.channels]) for frame in frames]


def downmix_weights(names: list[str]) -> np.ndarray:
    """Per-channel weights summing to 1 (see _DOWNMIX_WEIGHTS); equal weights if the named ones are all zero."""
    weights = np.array([_DOWNMIX_WEIGHTS.get(name, _UNLISTED_WEIGHT) for name in names], dtype=np.float64)
    if weights.sum() == 0:
        weights[:] = 1.0
    return weights / weights.sum()


def downmix(planes: np.ndarray, names: list[str]) -> np.ndarray:
    """(channels, samples) -> mono float32."""
    if planes.shape[0] == 1:
        return planes[0].astype(np.float32, copy=False)
    return (downmix_weights(names) @ planes).astype(np.float32)


class _DecordFailed(Exception):
    """decord could not decode the frames: the PyAV path is tried."""


def _decord_frames(source: MediaSource, width: int, height: int, fps: float,
                   max_frames: int) -> tuple[list[np.ndarray], list[float], float]:
    """decord scales to the displayed size and turns the picture upright itself; frame times are its timestamps
    from the stream's start."""
    try:
        reader = decord.VideoReader(_rewind(source), ctx=decord.cpu(0), width=width, height=height)
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
        with _open(source, "decode_failed") as container:
            end = _video_packets_end(container)
            times = sample_times(end, fps, max_frames)
        with _open(source, "decode_failed") as container:
            video = video_stream(container)
            picked = _frames_on_screen(container.decode(video), _start(video), times)
            frames = [_upright(frame, width, height) for frame in picked]
    except av.FFmpegError as err:
        raise MediaError("decode_failed", f"pyav: {err}{context}"[:300]) from None
    origin = _start(video)
    return frames, [float(frame.time) - origin for frame in picked], end


def _video_packets_end(container: av.container.InputContainer) -> float:
    """The end of the video's last frame, from the start of its first, by the packets' timestamps."""
    video = video_stream(container)
    if video is None:
        raise MediaError("decode_failed", "no video track")
    origin, base = _start(video), video.time_base
    packets = sorted((p.pts, p.duration or 0) for p in _whole_track(container, video) if p.pts is not None)
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
