"""Low-level media synthesis for the demo set: espeak-ng speech, a drawn talking face, ffmpeg muxing.

Only numpy, Pillow and the `espeak-ng` / `ffmpeg` executables: the demo data must build on a bare CPU
machine without any model or media library. `engine.devkit.demo_data` decides *what* to plant; this module
only knows how to turn speech and an expression into an .mp4.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import tempfile
import wave
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_RATE = 16000  # what the engine decodes to; synthesising at it avoids a second resample
PAD_S = 0.3  # silence-with-room-tone either side of speech, like a real cut around an utterance
ROOM_TONE_DBFS = -50.0  # keeps pauses from being digital zeros, which would give an infinite SNR
NOISE_DBFS = -12.0  # loud enough that a speech-SNR filter must reject it
_SPEECH_PEAK = 0.7  # espeak voices differ in level; normalise so mouth motion and SNR are comparable

Expression = Literal["neutral", "happy", "sad", "angry", "surprised", "fearful"]
AudioKind = Literal["speech", "noise", "none"]


@dataclass(frozen=True)
class FaceStyle:
    """Per-expression geometry in face-relative units (face half-height = 1)."""

    brow_tilt: float  # >0 raises the inner ends (sad, fearful), <0 lowers them (angry)
    brow_lift: float  # how far the brows sit above the eyes
    eye_open: float  # eye height relative to a neutral eye
    smile: float  # >0 lifts the mouth corners, <0 drops them
    mouth_width: float
    mouth_rest: float  # opening when silent (surprise keeps the mouth open)


_STYLES: dict[str, FaceStyle] = {
    "neutral": FaceStyle(0.0, 0.22, 1.0, 0.0, 0.50, 0.0),
    "happy": FaceStyle(0.0, 0.26, 0.8, 0.14, 0.60, 0.05),
    "sad": FaceStyle(0.10, 0.22, 0.8, -0.12, 0.44, 0.0),
    "angry": FaceStyle(-0.12, 0.14, 0.8, -0.05, 0.46, 0.0),
    "surprised": FaceStyle(0.0, 0.38, 1.4, 0.0, 0.34, 0.25),
    "fearful": FaceStyle(0.10, 0.34, 1.3, -0.06, 0.56, 0.08),
}
EXPRESSIONS: tuple[str, ...] = tuple(_STYLES)
# What the drawing shows, in words: (face, head). Kept beside _STYLES so the two change together.
DRAWN_LOOK: dict[str, tuple[str, str]] = {
    "neutral": (
        "The face is relaxed with level eyebrows and a straight mouth",
        "The head is upright and still",
    ),
    "happy": (
        "The mouth corners are raised in a smile and the eyebrows sit relaxed above the eyes",
        "The head is upright and steady, facing the camera openly",
    ),
    "sad": (
        "The mouth corners turn down and the inner ends of the eyebrows are raised",
        "The head is held still with little energy",
    ),
    "angry": (
        "The eyebrows are pulled down and together and the mouth is pressed into a tight line",
        "The head is held rigid and square to the camera",
    ),
    "surprised": (
        "The eyebrows are raised high, the eyes are wide open and the mouth stays open",
        "The head stays frozen in place",
    ),
    "fearful": (
        "The eyes are wide, the inner eyebrows are raised and the mouth is stretched sideways",
        "The head is held stiffly, as if braced",
    ),
}


# ---------------------------------------------------------------- audio


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM from a RIFF blob. espeak-ng --stdout streams, so its size fields are bogus (0x7ffff...):
    read the format chunk and take everything after the `data` tag instead of trusting `wave`."""
    fmt = data.find(b"fmt ")
    tag = data.find(b"data")
    if data[:4] != b"RIFF" or fmt < 0 or tag < 0:
        raise RuntimeError(f"espeak-ng did not produce a WAV stream ({len(data)} bytes)")
    channels, rate = struct.unpack("<HI", data[fmt + 10 : fmt + 16])
    pcm = data[tag + 8 :]
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1), rate


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resample by truncating/zero-padding the spectrum; exact enough for short clips."""
    if src_rate == dst_rate or audio.size == 0:
        return audio.astype(np.float32)
    n_out = max(1, round(audio.size * dst_rate / src_rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    out = np.fft.irfft(spectrum[: n_out // 2 + 1], n_out) * (n_out / audio.size)
    return out.astype(np.float32)


def _trim_silence(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    # espeak appends a variable tail of silence; trimming makes PAD_S the only padding.
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def synthesize_speech(
    text: str,
    voice: str = "en-us",
    pitch: int = 50,
    speed: int = 160,
    sample_rate: int = SAMPLE_RATE,
    word_gap: int = 3,
) -> np.ndarray:
    """Float32 mono speech in [-1, 1] at `sample_rate`, peak-normalised, leading/trailing silence trimmed.

    word_gap (espeak-ng -g, in 10 ms units) separates the words slightly: espeak runs words together,
    and a 30 ms gap cut Whisper tiny.en's word error rate on espeak speech by more than half.
    """
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-g", str(word_gap), "--stdout"]
    # Text goes through stdin so a sentence can never be mistaken for a command-line flag.
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")[-500:]
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}) for voice {voice!r}: {stderr}")
    samples, rate = _parse_wav(proc.stdout)
    speech = _trim_silence(resample(samples, rate, sample_rate))
    peak = float(np.max(np.abs(speech))) if speech.size else 0.0
    if peak == 0.0:
        raise RuntimeError(f"espeak-ng produced silence for voice {voice!r} and text {text!r}")
    return (speech * (_SPEECH_PEAK / peak)).astype(np.float32)


def describe_voice(voice: str, pitch: int, speed: int) -> str:
    """Words for an espeak-ng voice and its settings, e.g. "a British female voice with high pitch ..."."""
    accent = "an American" if voice.startswith("en-us") else "a British" if voice.startswith("en-gb") else "a"
    gender = "female" if "+f" in voice else "male"  # espeak's +fN variants are female, the rest male
    pitch_word = "low" if pitch < 42 else "high" if pitch > 58 else "medium"
    rate_word = "slow" if speed < 145 else "fast" if speed > 165 else "moderate"
    return f"{accent} {gender} voice with {pitch_word} pitch and a {rate_word} speaking rate"


def dbfs_to_rms(dbfs: float) -> float:
    return 10 ** (dbfs / 20)


def room_tone(n: int, rng: np.random.Generator, dbfs: float = ROOM_TONE_DBFS) -> np.ndarray:
    return rng.normal(0.0, dbfs_to_rms(dbfs), n).astype(np.float32)


def white_noise(n: int, rng: np.random.Generator, dbfs: float = NOISE_DBFS) -> np.ndarray:
    # Uniform noise: RMS = a / sqrt(3), and unlike Gaussian noise it never clips at -12 dBFS.
    amplitude = dbfs_to_rms(dbfs) * math.sqrt(3)
    return rng.uniform(-amplitude, amplitude, n).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


# ---------------------------------------------------------------- timing


def frame_count(duration_s: float, fps: int) -> int:
    return max(1, math.ceil(duration_s * fps - 1e-6))


def natural_duration(speech: np.ndarray | None, fps: int) -> float:
    """Padded speech length rounded up to whole frames, so video and audio end together."""
    if speech is None:
        raise ValueError("duration_s is required when there is no speech")
    return frame_count(speech.size / SAMPLE_RATE + 2 * PAD_S, fps) / fps


def speech_track(speech: np.ndarray | None, n_samples: int) -> np.ndarray:
    """Speech placed after PAD_S of lead-in, cut or zero-extended to n_samples (no noise yet)."""
    track = np.zeros(n_samples, dtype=np.float32)
    if speech is not None:
        start = min(int(PAD_S * SAMPLE_RATE), n_samples)
        body = speech[: n_samples - start]
        track[start : start + body.size] = body
    return track


def mouth_envelope(speech: np.ndarray, n_frames: int, fps: int) -> np.ndarray:
    """Mouth opening 0..1 per video frame from the speech level in that frame's window.

    An absolute dB scale (-45 dBFS closed, -15 dBFS fully open) rather than a per-clip normalisation:
    a clip with only room tone must keep its mouth shut instead of amplifying noise into chatter.
    """
    hop = SAMPLE_RATE / fps
    opening = np.zeros(n_frames, dtype=np.float32)
    for i in range(n_frames):
        window = speech[int(i * hop) : int((i + 1) * hop)]
        if window.size:
            rms = math.sqrt(float(np.mean(np.square(window, dtype=np.float64)))) + 1e-9
            opening[i] = np.clip((20 * math.log10(rms) + 45) / 30, 0.0, 1.0)
    return opening


# ---------------------------------------------------------------- video


def _draw_eyes(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, style: FaceStyle, blink: bool) -> None:
    for side in (-1, 1):
        ex, ey = cx + side * 0.36 * r, cy - 0.22 * r
        half_w, half_h = 0.12 * r, (0.02 if blink else 0.09 * style.eye_open) * r
        draw.ellipse([ex - half_w, ey - half_h, ex + half_w, ey + half_h], fill=(255, 255, 255), outline=(0, 0, 0))
        if not blink:
            pupil = 0.05 * r
            draw.ellipse([ex - pupil, ey - pupil, ex + pupil, ey + pupil], fill=(20, 20, 30))
        # Brows: the inner end (towards the nose) moves with brow_tilt, which is what reads as emotion.
        by = ey - style.brow_lift * r
        inner, outer = (ex - side * 0.14 * r, by - style.brow_tilt * r), (ex + side * 0.16 * r, by)
        draw.line([inner, outer], fill=(40, 25, 15), width=max(1, round(0.05 * r)))


def _lip(cx: float, my: float, half_w: float, corner_lift: float, bulge: float) -> list[tuple[float, float]]:
    """Points of one lip from the left to the right corner: a parabola through both (shared) corners.

    corner_lift raises the corners (a smile) or drops them (a frown); bulge pushes the middle of the lip
    away from the corners, up for the upper lip and down for the lower one when the mouth opens.
    """
    points = []
    for k in range(9):
        t = -1 + k / 4
        points.append((cx + t * half_w, my - corner_lift * t * t + bulge * (1 - t * t)))
    return points


def _draw_mouth(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, style: FaceStyle, opening: float) -> None:
    # Talking narrows the mouth a little while it opens, as real lips do.
    half_w = style.mouth_width * r / 2 * (1 - 0.25 * opening)
    my, lift = cy + 0.45 * r, style.smile * r
    gap = (style.mouth_rest + (1 - style.mouth_rest) * opening) * 0.3 * r
    upper = _lip(cx, my, half_w, lift, -0.35 * gap)
    if gap < 1.0:
        draw.line(upper, fill=(120, 30, 40), width=max(1, round(0.04 * r)))
        return
    lower = _lip(cx, my, half_w, lift, 0.65 * gap)
    draw.polygon(upper + lower[::-1], fill=(90, 20, 30), outline=(150, 40, 50))


def draw_face(
    size: tuple[int, int],
    expression: str,
    opening: float,
    background: tuple[int, int, int] = (70, 110, 160),
    skin: tuple[int, int, int] = (235, 195, 160),
    blink: bool = False,
) -> Image.Image:
    """One frame: a face in the middle of a plain background, scaled to the frame size."""
    style = _STYLES[expression]
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    cx, cy, r = width / 2, height / 2, 0.4 * min(width, height)
    draw.ellipse([cx - 0.8 * r, cy - r, cx + 0.8 * r, cy + r], fill=skin, outline=tuple(c * 3 // 5 for c in skin))
    _draw_eyes(draw, cx, cy, r, style, blink)
    _draw_mouth(draw, cx, cy, r, style, opening)
    return image


def render_frames(
    size: tuple[int, int], expression: str, openings: np.ndarray, background: tuple[int, int, int], fps: int
) -> Iterator[bytes]:
    """Yields raw RGB24 frames; a short blink every ~3 s keeps the face from looking frozen."""
    blink_every = 3 * fps
    for i, opening in enumerate(openings):
        blink = i % blink_every == blink_every - 1
        yield draw_face(size, expression, float(opening), background, blink=blink).tobytes()


# ---------------------------------------------------------------- muxing


def _palette_colour(name: str) -> tuple[int, int, int]:
    # A background derived from the file name: varied across clips, yet stable across reruns.
    hue = zlib.crc32(name.encode()) % 360
    image = Image.new("HSV", (1, 1), (int(hue * 255 / 360), 110, 170)).convert("RGB")
    return image.getpixel((0, 0))  # type: ignore[return-value]


def _ffmpeg_command(
    out: Path, wav: Path | None, size: tuple[int, int] | None, fps: int, duration_s: float, faststart: bool
) -> list[str]:
    """One ffmpeg call: raw RGB frames on stdin (when size is given) plus the WAV (when given)."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    if size is not None:
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0]}x{size[1]}", "-framerate", str(fps)]
        cmd += ["-i", "pipe:0"]
    if wav is not None:
        cmd += ["-i", str(wav)]
    if size is not None:
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if wav is not None:
        cmd += ["-c:a", "aac", "-b:a", "64k", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    cmd += ["-t", f"{duration_s:.3f}", "-map_metadata", "-1"]
    # Without +faststart the mp4 muxer writes the index (moov) last: a cut file then has no index at all.
    cmd += ["-movflags", "+faststart"] if faststart else []
    return [*cmd, str(out)]


def run_ffmpeg(cmd: list[str], frames: Iterator[bytes] | None, stderr_path: Path) -> None:
    """Streams frames into ffmpeg's stdin; stderr goes to a file so a chatty ffmpeg can never block."""
    with open(stderr_path, "wb") as err:
        stdin = subprocess.PIPE if frames is not None else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for frame in frames or ():
                proc.stdin.write(frame)  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # ffmpeg died early; its return code and stderr below say why
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait()
    if proc.returncode != 0:
        tail = stderr_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}) writing {cmd[-1]}:\n{tail}")


def write_clip(
    path: Path,
    *,
    speech: np.ndarray | None,
    expression: str = "neutral",
    size: tuple[int, int] = (320, 240),
    fps: int = 10,
    duration_s: float | None = None,
    audio: AudioKind = "speech",
    video: bool = True,
    faststart: bool = False,
    background: tuple[int, int, int] | None = None,
) -> None:
    """Writes an H.264/AAC .mp4 of a face whose mouth follows `speech` (16 kHz float32).

    Duration is `duration_s` (speech is cut, or extended with room tone) or else the speech plus PAD_S
    each side; either way it is rounded up to whole frames so both tracks end together. audio="noise"
    replaces the soundtrack with white noise at NOISE_DBFS (the face then stays silent).
    """
    if expression not in _STYLES:
        raise ValueError(f"expression={expression!r}: expected one of {EXPRESSIONS}")
    if not video and audio == "none":
        raise ValueError("a clip needs at least one of video and audio")
    duration = frame_count(duration_s, fps) / fps if duration_s is not None else natural_duration(speech, fps)
    path = Path(path)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))  # noise is reproducible per file name
    spoken = speech_track(speech if audio == "speech" else None, round(duration * SAMPLE_RATE))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp_clip_") as tmp:
        wav = None if audio == "none" else Path(tmp) / "audio.wav"
        if wav is not None:
            track = white_noise(spoken.size, rng) if audio == "noise" else spoken + room_tone(spoken.size, rng)
            _write_wav(wav, track)
        frames = None
        if video:
            openings = mouth_envelope(spoken, frame_count(duration, fps), fps)
            frames = render_frames(size, expression, openings, background or _palette_colour(path.name), fps)
        staged = Path(tmp) / path.name  # written aside and moved, so a failed run leaves no half file
        cmd = _ffmpeg_command(staged, wav, size if video else None, fps, duration, faststart)
        run_ffmpeg(cmd, frames, Path(tmp) / "ffmpeg.log")
        os.replace(staged, path)


