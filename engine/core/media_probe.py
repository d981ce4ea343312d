"""Media containers (PyAV): opening a clip (a local path, or the bytes of a remote one in memory), its size before
any byte is fetched, and the probe - tracks, displayed size, rotation, each track's declared length. Failures are
MediaError with a machine-readable reason. engine.core.media decodes on top of this and re-exports its names.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av

from engine.core import isobmff, orientation_sei, storage

MediaSource = str | io.BytesIO
# Codecs whose FFmpeg decoders set no display matrix from the bitstream: in an mp4/mov the header alone decides.
_NO_BITSTREAM_TURN = frozenset({"av1", "vp8", "vp9", "mpeg4", "mpeg1video", "mpeg2video", "h263", "prores", "dnxhd"})



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



def rewind(source: MediaSource) -> MediaSource:
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source



def open_container(source: MediaSource, reason: str) -> av.container.InputContainer:
    try:
        return av.open(rewind(source), mode="r")
    except av.FFmpegError as err:
        raise MediaError(reason, str(err)) from None



def probe(source: MediaSource) -> ProbeResult:
    with open_container(source, "unreadable_container") as container:
        video, audio = video_stream(container), audio_stream(container)
        rotation = _rotation(source, container, video) if video else 0
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



def _rotation(source: MediaSource, container: av.container.InputContainer, video: av.video.stream.VideoStream) -> int:
    """Degrees clockwise, from the display matrix FFmpeg hands the video's frames (PyAV shows it on frames only).
    In an mp4/mov that is the track header's (tkhd times mvhd), read here from the boxes without decoding a frame,
    which was most of the probe's time. The first frame is decoded where those boxes do not read; where the header
    leaves the picture unturned but the codec may carry a turn of its own (an H.264/HEVC display-orientation SEI,
    which FFmpeg's decoder puts on the frames after the header's matrix); and in every other container: none rules
    a turn out, since that SEI turns frames in mpegts, flv, avi or matroska alike, and matroska has its own."""
    if {"mov", "mp4"} & set(container.format.name.split(",")):
        try:
            matrix = _header_matrix(source, video.id)
            if matrix != isobmff.IDENTITY:  # FFmpeg's comes before any the decoder adds, and PyAV reads the first
                return _clockwise(isobmff.counter_clockwise(matrix))
        except (isobmff.BoxError, OSError):
            return _frame_rotation(container, video)  # boxes that do not hold together: the decoder's answer
        return _bitstream_rotation(container, video)
    return _frame_rotation(container, video)



def _header_matrix(source: MediaSource, track_id: int) -> isobmff.Matrix:
    """The mp4/mov video track's display matrix, reading only the box headers and the moov box. FFmpeg gives the
    stream the tkhd track id, so that picks the track the probe chose."""
    # An in-memory source is read through a second BytesIO over its bytes, so the position PyAV reads the
    # container from stays where it was.
    with open(source, "rb") if isinstance(source, str) else io.BytesIO(source.getvalue()) as handle:
        size = handle.seek(0, os.SEEK_END)
        return isobmff.video_track(handle, size, track_id).matrix



def _bitstream_rotation(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> int:
    """For a track its header leaves unturned: 0 where the codec cannot turn its frames itself or the first packet
    has no display-orientation SEI, else the first frame's answer (that packet decoded first)."""
    codec = video.codec_context.codec.canonical_name
    if codec in _NO_BITSTREAM_TURN:
        return 0
    if codec not in ("h264", "hevc"):
        return _frame_rotation(container, video)
    try:
        first = next(container.demux(video), None)
    except av.FFmpegError:
        return 0  # as _frame_rotation: left to the decode stage
    extradata = bytes(video.codec_context.extradata or b"")
    if first is None or not orientation_sei.may_turn(codec, extradata, bytes(first)):
        return 0
    return _frame_rotation(container, video, first)



def _frame_rotation(container: av.container.InputContainer, video: av.video.stream.VideoStream,
                    first: av.Packet | None = None) -> int:
    """From the first frame's display matrix; `first`, a packet already demuxed, is decoded before the rest. A
    stream that does not decode here is left to the decode stage to judge."""
    try:
        frames = itertools.chain(video.decode(first) if first is not None else (), container.decode(video))
        frame = next(frames, None)
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



def stream_start(stream: av.stream.Stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0



def whole_track(container: av.container.InputContainer, stream: av.stream.Stream) -> Iterator[av.Packet]:
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
