"""Clips in the containers and codecs corpora ship (for the media conformance tests): ffmpeg's testsrc2 pattern over
any number of audio tracks (multichannel WAVs, late starts), any codec and container, and phone-style rotation
written into an mp4/mov's display matrix. Built on engine.devkit.demo_media's ffmpeg runner.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.core import isobmff
from engine.devkit.demo_media import SAMPLE_RATE, run_ffmpeg


@dataclass(frozen=True)
class AudioInput:
    """One audio track of write_pattern_clip: a WAV, placed `offset_s` late on the clip's clock."""

    wav: Path
    offset_s: float = 0.0



def write_wav_channels(path: Path, channels: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM WAV of (samples, channels) float audio. ffmpeg reads 6 channels as 5.1: FL FR FC LFE and the
    two surrounds, in that order."""
    pcm = (np.clip(channels, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())



def write_pattern_clip(
    path: Path,
    *,
    duration_s: float,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    codec_args: Sequence[str] = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"),
    audio: Sequence[AudioInput] = (),
    video_filter: str | None = None,
) -> None:
    """ffmpeg's testsrc2 pattern (asymmetric and different in every frame, so a turned or misplaced frame shows)
    over the given audio tracks, encoded and muxed as `codec_args` say (the container from the suffix). The
    video runs `duration_s`, each audio track as long as its WAV: a shorter one ends early, as real tracks do."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={duration_s}"]
    for track in audio:
        cmd += [*(["-itsoffset", f"{track.offset_s}"] if track.offset_s else []), "-i", str(track.wav)]
    cmd += ["-map", "0:v", *(arg for k in range(len(audio)) for arg in ("-map", f"{k + 1}:a"))]
    cmd += [*(["-vf", video_filter] if video_filter else []), *codec_args, "-map_metadata", "-1"]
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp_clip_") as tmp:
        staged = Path(tmp) / f"clip{path.suffix}"  # written aside and moved, so a failed run leaves no half file
        run_ffmpeg([*cmd, str(staged)], None, Path(tmp) / "ffmpeg.log")
        os.replace(staged, path)



def rotate_video_track(path: Path, clockwise: int) -> None:
    """Sets the display matrix of an mp4/mov's video track, as a phone does for a picture held upright: the coded
    frames stay as they are, a player turns them `clockwise` degrees (90, 180 or 270). ffmpeg 5.1 cannot write
    one itself (its `rotate` tag is gone and -display_rotation came in 6.0)."""
    one, minus_one = 0x00010000, 0xFFFF0000  # 16.16 fixed point
    a, b, c, d = {90: (0, one, minus_one, 0), 180: (minus_one, 0, 0, minus_one), 270: (0, minus_one, one, 0)}[clockwise]
    data = bytearray(Path(path).read_bytes())
    track = isobmff.video_track(io.BytesIO(data), len(data), track_id=0)  # the first video track
    struct.pack_into(">9I", data, track.matrix_at, a, b, 0, c, d, 0, 0, 0, 0x40000000)
    Path(path).write_bytes(data)
