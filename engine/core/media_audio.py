"""Audio decode (PyAV): the chosen track downmixed to mono at the requested rate, placed on the video's clock.

The track is the default-flagged one (else the first), decoded to its own end (a file cut short is an error), with
a new resampler wherever the format, layout or rate changes and a downmix that keeps dialogue (centre channel
first, LFE dropped). engine.core.media calls `decode_audio` once per clip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from engine.core.media_probe import (
    MediaError,
    MediaSource,
    audio_stream,
    open_container,
    stream_start,
    video_stream,
    whole_track,
)

# Downmix weights by channel name before normalising to a sum of 1: dialogue sits in the centre channel of
# multichannel mixes, music and effects in the others, and the LFE carries no speech; surrounds weigh half a front
# channel. Names not listed (wide, top, and the unnamed channels of an unknown layout) weigh as much as a front.
_DOWNMIX_WEIGHTS = {"FC": 1.0, "FL": 0.5, "FR": 0.5, "LFE": 0.0, "LFE2": 0.0,
                    "BL": 0.25, "BR": 0.25, "SL": 0.25, "SR": 0.25, "BC": 0.25}


_UNLISTED_WEIGHT = 0.5



def on_video_clock(audio: np.ndarray, offset_s: float, sample_rate: int) -> np.ndarray:
    """The audio with sample 0 at the first frame's time: a late start padded with silence, an early one cut."""
    lead = round(offset_s * sample_rate)
    if lead > 0 and audio.size:
        return np.concatenate([np.zeros(lead, dtype=np.float32), audio])
    return audio[-lead:] if lead < 0 else audio



@dataclass(frozen=True)
class AudioTrack:
    samples: np.ndarray  # mono at the requested rate
    start_s: float  # the time of its first sample
    video_start_s: float
    container: str  # PyAV's name of the container format



def decode_audio(source: MediaSource, sample_rate: int) -> AudioTrack:
    """The chosen track downmixed to mono at sample_rate."""
    with open_container(source, "decode_failed") as container:
        video, track = video_stream(container), audio_stream(container)
        if track is None:
            raise MediaError("decode_failed", "no audio track")
        try:
            samples, first = _mono(_decoded(whole_track(container, track)), sample_rate)
        except av.FFmpegError as err:
            raise MediaError("decode_failed", f"audio: {err}") from None
        start = first if first is not None else stream_start(track)
        return AudioTrack(samples, start, stream_start(video) if video else start, container.format.name)



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
