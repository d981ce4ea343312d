"""Media conformance corpus: clips made the way real corpora ship them, through the probe and decode stages.

Each legitimate clip must be kept with the metadata ffprobe reads from it, its frames upright and taken at their
own timestamps (compared with ffmpeg's own decode, which turns rotated video by itself), and its audio on the
video's clock (cross-correlated with the audio it was made from). Truncated and corrupt controls must be
rejected with their reasons. The corpus is made once with ffmpeg and espeak-ng into the test cache
(.cache/test_clips/conformance) and made again when CORPUS_VERSION or the ffmpeg build changes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import decord
import numpy as np
import pytest

from engine.core.config import MediaConfig
from engine.core.media import decode_jpeg, sample_times, scaled_size
from engine.core.schema import new_row
from engine.devkit.demo_containers import AudioInput, rotate_video_track, write_pattern_clip, write_wav_channels
from engine.devkit.demo_media import resample, room_tone, synthesize_speech
from engine.stages.decode import DecodeStage, audio_from_row
from engine.stages.probe import ProbeStage
from tests.conftest import CACHE

CORPUS_VERSION = 1
OUT = CACHE / "conformance"
SOURCE_RATE = 48_000
DURATION_S = 1.6  # every clip's video; 3 frames at the engine's 2 fps
SPEECH_AT_S = 0.15  # where the speech starts in each source track
MAX_SIDE = MediaConfig().max_frame_side
H264 = "-c:v libx264 -preset ultrafast -pix_fmt yuv420p"
SURROUND = ("FL", "FR", "FC", "LFE", "SL", "SR")  # the order ffmpeg reads a 6-channel WAV in (5.1)
# The downmix the engine promises: centre 2, fronts 1, surrounds 1/2, LFE 0, normalised to a sum of 1.
SURROUND_WEIGHTS = np.array([0.2, 0.2, 0.4, 0.0, 0.1, 0.1])
SURROUND_TONES_HZ = (310.0, 470.0, None, 70.0, 630.0, 790.0)  # the centre carries the speech


@dataclass(frozen=True)
class Case:
    name: str
    codec_args: str = f"{H264} -c:a aac"
    size: tuple[int, int] = (320, 240)
    fps: int = 25
    tracks: tuple[tuple[str, float], ...] = (("speech", 0.0),)  # (source WAV, offset in s) per audio track
    video_filter: str | None = None
    rotate: int = 0
    damage: str | None = None  # "cut": the second half of the file lost; "zero_head": its first KB zeroed
    verdict: tuple[str, str] | None = None  # (reject_stage, reject_reason) of a control
    needs: str | None = None  # an ffmpeg encoder this case cannot be made without
    chosen_track: int = 0
    rotation: int = 0  # clockwise, as the case promises it (checked against ffprobe too)
    notes: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("crema-d.flv", "-c:v flv1 -q:v 4 -c:a libmp3lame -ar 22050 -ac 1"),
    Case("msp-improv.avi", "-c:v mpeg4 -q:v 4 -c:a pcm_s16le", tracks=(("speech_stereo", 0.0),)),
    # Broadcast MPEG-2 is anamorphic: 352x288 coded, shown 16:9 (sample aspect 16:11), so 512x288.
    Case("broadcast.mpg", "-c:v mpeg2video -q:v 4 -aspect 16:9 -c:a mp2 -b:a 192k", size=(352, 288),
         tracks=(("speech_stereo", 0.0),)),
    # This encode (realtime VP9, 320x180 at 30 fps) is one decord's threaded decoder fails on (dmlc/decord#246).
    Case("web.webm", "-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 1M -c:a libopus", size=(320, 180),
         fps=30),
    Case("hevc.mkv", "-c:v libx265 -preset ultrafast -x265-params log-level=error -c:a aac", needs="libx265"),
    Case("phone portrait.mov", size=(320, 180), fps=30, rotate=90, rotation=90),
    Case("phone turned.mp4", size=(320, 180), fps=30, rotate=270, rotation=270),
    # 10 fps for the first second, 30 fps after: the average rate (20) puts late frames 0.33 s off.
    Case("vfr.mp4", f"{H264} -fps_mode vfr -c:a aac", fps=30, video_filter="select='if(lt(t,1),not(mod(n,3)),1)'"),
    Case("surround 5.1.mp4", f"{H264} -c:a aac -b:a 384k", tracks=(("surround", 0.0),)),
    Case("dubbed two tracks.mkv", f"{H264} -c:a aac -disposition:a:0 0 -disposition:a:1 default",
         tracks=(("other", 0.0), ("speech", 0.0)), chosen_track=1),
    Case("meld offset.mp4", tracks=(("speech", 0.28),)),  # audio starting 0.28 s after the first frame
    Case("trailing frames.mp4", tracks=(("short", 0.0),)),  # audio ends at 1.0 s, the video at 1.6 s
    Case("odd name – ünïcödé 日本語 #1 'x' (copy).mp4"),
    # Controls.
    Case("truncated.mp4", damage="cut", verdict=("probe", "unreadable_container")),  # its index was at the end
    # Index intact, data cut: the tracks end before the last packet the index lists.
    Case("truncated faststart.mp4", f"{H264} -c:a aac -movflags +faststart", damage="cut",
         verdict=("decode", "decode_failed")),
    # Without an index up front (mkv, webm): both tracks end early, short of the length the header declares.
    Case("truncated.mkv", damage="cut", verdict=("decode", "duration_mismatch")),
    Case("truncated.webm", "-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 1M -c:a libopus", size=(320, 180),
         fps=30, damage="cut", verdict=("decode", "duration_mismatch")),
    Case("corrupt header.mkv", damage="zero_head", verdict=("probe", "unreadable_container")),
]
KEPT = [case.name for case in CASES if case.verdict is None]
BY_NAME = {case.name: case for case in CASES}


# ---- the corpus ----------------------------------------------------------------------------------------------
def _ffmpeg_build() -> str:
    return subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _has_encoder(name: str) -> bool:
    listing = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in listing.splitlines() if line.startswith(" "))


def _track(speech: np.ndarray, length_s: float, seed: int) -> np.ndarray:
    """Speech from SPEECH_AT_S over -50 dBFS room tone, `length_s` long, at SOURCE_RATE."""
    n = round(length_s * SOURCE_RATE)
    track = room_tone(n, np.random.default_rng(seed))
    start = round(SPEECH_AT_S * SOURCE_RATE)
    body = resample(speech, 16_000, SOURCE_RATE)[: n - start]
    track[start : start + body.size] += body
    return track


def _sources(folder: Path) -> dict[str, np.ndarray]:
    """The source tracks as (samples, channels) at SOURCE_RATE."""
    speech = synthesize_speech("Put the red cup down.")
    other = synthesize_speech("Nein, heute nicht.", voice="de", pitch=30)
    mono = _track(speech, DURATION_S, 1)
    t = np.arange(mono.size) / SOURCE_RATE
    surround = np.stack([mono if hz is None else 0.2 * np.sin(2 * np.pi * hz * t) for hz in SURROUND_TONES_HZ], 1)
    return {"speech": mono[:, None], "speech_stereo": np.stack([mono, mono], 1),
            "short": _track(speech, 1.0, 2)[:, None], "other": _track(other, DURATION_S, 3)[:, None],
            "surround": surround}


def _make(case: Case, folder: Path) -> None:
    audio = [AudioInput(folder / "sources" / f"{wav}.wav", offset) for wav, offset in case.tracks]
    path = folder / case.name
    write_pattern_clip(path, duration_s=DURATION_S, size=case.size, fps=case.fps, codec_args=case.codec_args.split(),
                       audio=audio, video_filter=case.video_filter)
    if case.rotate:
        rotate_video_track(path, case.rotate)
    if case.damage == "cut":
        os.truncate(path, path.stat().st_size // 2)
    elif case.damage == "zero_head":
        with open(path, "r+b") as handle:
            handle.write(bytes(1024))


@pytest.fixture(scope="module")
def corpus() -> Path:
    stamp = {"version": CORPUS_VERSION, "ffmpeg": _ffmpeg_build(), "cases": [c.name for c in CASES]}
    made = [c for c in CASES if c.needs is None or _has_encoder(c.needs)]
    if (OUT / "params.json").is_file() and json.loads((OUT / "params.json").read_text()) == stamp:
        return OUT
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "sources").mkdir(parents=True)
    for name, channels in _sources(OUT).items():
        write_wav_channels(OUT / "sources" / f"{name}.wav", channels, SOURCE_RATE)
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda case: _make(case, OUT), made))
    (OUT / "params.json").write_text(json.dumps(stamp))  # last: its presence marks a complete corpus
    return OUT


@pytest.fixture(scope="module")
def rows(corpus: Path) -> dict[str, dict]:
    """Every clip of the corpus through the probe and decode stages, as the build runs them."""
    media = MediaConfig()
    present = [case.name for case in CASES if (corpus / case.name).exists()]
    done = DecodeStage(media)(ProbeStage(media)([new_row(str(corpus / name)) for name in present]))
    return {name: row for name, row in zip(present, done, strict=True)}


def _row(rows: dict[str, dict], name: str) -> dict:
    if name not in rows:
        pytest.skip(f"{name}: this ffmpeg lacks the {BY_NAME[name].needs} encoder")
    return rows[name]


# ---- what ffmpeg itself says -----------------------------------------------------------------------------------
def _ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, str(path)], capture_output=True,
                         check=True).stdout
    return json.loads(out)


@functools.cache
def _streams(path: Path) -> tuple[dict, list[dict], dict]:
    info = _ffprobe(path, "-show_streams", "-show_format")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    return video, [s for s in info["streams"] if s["codec_type"] == "audio"], info["format"]


def _displayed(video: dict) -> tuple[int, int, int]:
    """Width, height and clockwise rotation as displayed, from ffprobe's stream fields."""
    width, height = video["width"], video["height"]
    aspect = video.get("sample_aspect_ratio", "1:1")
    if aspect not in ("N/A", "0:1", "1:1"):
        width = round(width * Fraction(aspect.replace(":", "/")))
    matrix = [d for d in video.get("side_data_list", []) if "rotation" in d]
    rotation = round(-float(matrix[0]["rotation"])) % 360 if matrix else 0  # ffprobe: counter-clockwise
    return (height, width, rotation) if rotation in (90, 270) else (width, height, rotation)


@functools.cache
def _frame_starts(path: Path) -> tuple[np.ndarray, float]:
    """Each frame's start from the video start (the packets' timestamps, sorted) and the end of the last one."""
    video = _streams(path)[0]
    packets = _ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,duration_time")["packets"]
    timed = sorted((float(p["pts_time"]), float(p.get("duration_time", 0) or 0)) for p in packets)
    origin = float(video["start_time"])
    starts = np.array([pts - origin for pts, _ in timed])
    last = timed[-1][1] or 1 / float(Fraction(video["avg_frame_rate"]))
    return starts, starts[-1] + last


def _on_screen(path: Path, times: list[float]) -> list[int]:
    """ffmpeg's frame numbers (in presentation order) on screen at these times: the last starting at or before."""
    starts, _ = _frame_starts(path)
    return [int(np.searchsorted(starts, t + 1e-4, side="right")) - 1 for t in times]


@functools.cache
def _ffmpeg_frames(path: Path, width: int, height: int, numbers: tuple[int, ...]) -> np.ndarray:
    """These frames as ffmpeg decodes them (turned upright by its autorotate), scaled to width x height; checks
    that ffmpeg decodes one frame per packet."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-vf", f"scale={width}:{height}",
                          "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    frames = np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)
    assert len(frames) == len(_frame_starts(path)[0])
    return frames[list(numbers)].astype(np.int16)


def _reference_audio(corpus: Path, case: Case) -> np.ndarray:
    """The chosen track's source, downmixed as the engine promises, at 16 kHz."""
    wav, _ = case.tracks[case.chosen_track]
    with wave.open(str(corpus / "sources" / f"{wav}.wav")) as source:
        pcm = np.frombuffer(source.readframes(source.getnframes()), "<i2").reshape(-1, source.getnchannels())
    channels = pcm.astype(np.float64) / 32767
    mono = channels @ SURROUND_WEIGHTS if channels.shape[1] == 6 else channels.mean(axis=1)
    return resample(mono, SOURCE_RATE, 16_000).astype(np.float64)


def _lag_s(decoded: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Where `reference` sits in `decoded` (s, by cross-correlation) and the normalised correlation there."""
    n = 1 << int(np.ceil(np.log2(decoded.size + reference.size)))
    corr = np.fft.irfft(np.fft.rfft(decoded, n) * np.conj(np.fft.rfft(reference, n)), n)
    lag = int(np.argmax(corr))
    lag = lag - n if lag > n // 2 else lag
    a = decoded[max(lag, 0) : max(lag, 0) + reference.size]
    b = reference[max(-lag, 0) : max(-lag, 0) + a.size]
    return lag / 16_000, float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- the tests -------------------------------------------------------------------------------------------------
def test_every_clip_is_kept_or_rejected_as_planted(rows):
    for case in CASES:
        if case.name not in rows:
            assert case.needs is not None  # only a case this ffmpeg has no encoder for is left out
            continue
        row = rows[case.name]
        got = (row["reject_stage"], row["reject_reason"]) if row["status"] == "rejected" else None
        assert got == case.verdict, (case.name, row["reject_detail"])


@pytest.mark.parametrize("name", KEPT)
def test_metadata_is_what_ffprobe_reads(rows, corpus, name):
    row, case = _row(rows, name), BY_NAME[name]
    video, audio, container = _streams(corpus / name)
    width, height, rotation = _displayed(video)
    assert rotation == case.rotation
    chosen = audio[case.chosen_track]
    assert (row["width"], row["height"], row["rotation"]) == (width, height, rotation)
    assert (row["video_codec"], row["audio_codec"]) == (video["codec_name"], chosen["codec_name"])
    assert (row["audio_track"], row["audio_channels"]) == (case.chosen_track, chosen["channels"])
    assert row["duration_s"] == pytest.approx(float(container["duration"]), abs=1e-3)
    for column, stream in (("video_track_s", video), ("audio_track_s", chosen)):
        declared = stream.get("duration")
        assert row[column] == (pytest.approx(float(declared), abs=1e-3) if declared else None), column


@pytest.mark.parametrize("name", KEPT)
def test_frames_are_upright_and_the_ones_on_screen_at_their_times(rows, corpus, name):
    row, path = _row(rows, name), corpus / name
    starts, end = _frame_starts(path)
    assert row["decoded_duration_s"] == pytest.approx(end, abs=2e-3)
    targets = sample_times(end, MediaConfig().fps, MediaConfig().max_frames)
    assert len(row["frame_times"]) == row["n_frames"] == len(targets)
    numbers = _on_screen(path, targets)
    assert row["frame_times"] == pytest.approx(starts[numbers], abs=2e-3)
    width, height = scaled_size(row["width"], row["height"], MAX_SIDE)
    reference = _ffmpeg_frames(path, width, height, tuple(numbers))
    for jpeg, expected in zip(row["frames_jpeg"], reference, strict=True):
        frame = decode_jpeg(jpeg).astype(np.int16)
        assert frame.shape == (height, width, 3)
        assert np.abs(expected - frame).mean() < 6  # ffmpeg's frame, up to JPEG and scaler error
        assert np.abs(np.rot90(expected, 2) - frame).mean() > 20  # the same picture upside down is far off


@pytest.mark.parametrize("name", KEPT)
def test_audio_is_on_the_video_clock(rows, corpus, name):
    row, case = _row(rows, name), BY_NAME[name]
    decoded = audio_from_row(row).astype(np.float64)
    reference = _reference_audio(corpus, case)
    offset = case.tracks[case.chosen_track][1]
    lag, correlation = _lag_s(decoded, reference)
    # Within 10 ms (a quarter of a 25 fps frame): the webm encode itself puts its Opus 7 ms early (the muxer's
    # timestamps for the pre-skip), every other clip is within 1 ms.
    assert lag == pytest.approx(offset, abs=0.01) and correlation > 0.9, (lag, correlation)
    if offset:  # the audio's late start is silence on the video's clock
        assert not decoded[: int((offset - 0.03) * 16_000)].any()
    video, audio, _ = _streams(corpus / name)
    start = float(audio[case.chosen_track]["start_time"]) - float(video["start_time"])
    assert row["audio_offset_s"] == pytest.approx(start, abs=0.01)  # the timestamps' (up to an Opus pre-skip)
    covered = min(row["decoded_duration_s"], offset + reference.size / 16_000) - offset
    assert row["audio_covered_s"] == pytest.approx(covered, abs=0.05)


def test_audio_shorter_than_the_video_is_kept_with_its_span(rows):
    row = rows["trailing frames.mp4"]
    assert row["status"] == "kept" and row["decoded_duration_s"] == pytest.approx(DURATION_S, abs=0.01)
    assert 1.0 <= row["audio_covered_s"] < 1.06  # the 1.0 s track, up to the codec's last frame


def test_the_default_audio_track_is_the_one_decoded(rows, corpus):
    case = BY_NAME["dubbed two tracks.mkv"]
    decoded = audio_from_row(rows[case.name]).astype(np.float64)
    first = _reference_audio(corpus, Case("first", tracks=case.tracks, chosen_track=0))
    assert _lag_s(decoded, first)[1] < 0.3  # the first track in file order is not what was decoded


def test_surround_downmix_keeps_the_dialogue_in_the_centre(rows, corpus):
    """Each source channel's weight in the decoded mono, by least squares against the six source channels."""
    decoded = audio_from_row(rows["surround 5.1.mp4"]).astype(np.float64)
    with wave.open(str(corpus / "sources" / "surround.wav")) as source:
        pcm = np.frombuffer(source.readframes(source.getnframes()), "<i2").reshape(-1, 6) / 32767
    channels = np.stack([resample(pcm[:, k], SOURCE_RATE, 16_000) for k in range(6)], 1).astype(np.float64)
    n = min(channels.shape[0], decoded.size)
    weights = np.linalg.lstsq(channels[:n], decoded[:n], rcond=None)[0]
    assert weights == pytest.approx(SURROUND_WEIGHTS, abs=0.02), dict(zip(SURROUND, weights.round(3), strict=True))


def test_pyav_decodes_the_frames_where_decord_fails_or_misplaces_them(rows, corpus):
    """decord decodes a clip's frames only where it gets them right: asked directly here for the sampled frames, it
    either raises, returns other frames than ffmpeg's (MPEG-2 in a program stream: a GOP late), or matches."""
    expected = {}
    for name in [name for name in KEPT if name in rows]:
        row, path = rows[name], corpus / name
        width, height = scaled_size(row["width"], row["height"], MAX_SIDE)
        numbers = _on_screen(path, row["frame_times"])
        try:
            reader = decord.VideoReader(str(path), width=width, height=height)
            frames = reader.get_batch(numbers).asnumpy().astype(np.int16)
        except decord.DECORDError:
            expected[name] = "pyav"
            continue
        reference = _ffmpeg_frames(path, width, height, tuple(numbers))
        expected[name] = "decord" if np.abs(frames - reference).mean(axis=(1, 2, 3)).max() < 6 else "pyav"
    assert {name: rows[name]["decoder"] for name in expected} == expected
    assert expected["web.webm"] == expected["broadcast.mpg"] == "pyav"  # both ways decord goes wrong are covered
