"""The demo set really contains what expected.jsonl claims, checked with ffprobe/ffmpeg, not our own code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.devkit import demo_data, demo_media
from engine.devkit.demo_data import (
    SENTENCES,
    PlantedClip,
    generate_demo_set,
    load_expected,
    synthesize_speech,
    write_clip,
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("ffmpeg") and shutil.which("ffprobe") and shutil.which("espeak-ng")),
    reason="needs the ffmpeg, ffprobe and espeak-ng executables",
)

# The contract with the engine, written out again here so a change in the generator cannot drift silently.
CONTRACT = {
    "good": (None, None),
    "wrong_transcript": ("asr", "wer_above_threshold"),
    "malformed_annotation": ("annotation", "malformed_annotation"),
    "truncated": ("probe", "unreadable_container"),
    "truncated_faststart": ("decode", "decode_failed"),
    "zero_byte": ("probe", "unreadable_container"),
    "not_a_video": ("probe", "unreadable_container"),
    "audio_only": ("probe", "missing_video_track"),
    "video_only": ("probe", "missing_audio_track"),
    "too_short": ("probe", "duration_too_short"),
    "too_long": ("probe", "duration_too_long"),
    "tiny_resolution": ("probe", "resolution_too_low"),
    "noise_audio": ("noise", "excessive_noise"),
}
AUDIO_AND_VIDEO = [
    "good",
    "wrong_transcript",
    "malformed_annotation",
    "truncated_faststart",
    "too_short",
    "too_long",
    "tiny_resolution",
    "noise_audio",
]
TEXT_FIELDS = ("video_desc", "facial_exp_desc", "body_lang_desc", "sentiment_analysis")
N_GOOD, N_WRONG, SEED = 2, 1, 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PlantedClip]]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo_set(out, n_good=N_GOOD, n_wrong=N_WRONG, seed=SEED)


def clips_of(demo: tuple[Path, list[PlantedClip]], kind: str) -> list[PlantedClip]:
    found = [c for c in demo[1] if c.kind == kind]
    assert found, f"no {kind} clip planted"
    return found


def ffprobe(path: Path) -> dict | None:
    """ffprobe's JSON for the file, or None when ffprobe cannot read it."""
    cmd = ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def stream_types(info: dict) -> list[str]:
    return sorted(s["codec_type"] for s in info["streams"])


def decoded_audio(path: Path) -> np.ndarray:
    cmd = ["ffmpeg", "-v", "quiet", "-i", str(path), "-vn", "-f", "s16le", "-ac", "1", "-ar", "16000", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=False).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0


def plain_words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", re.sub(r"<[^>]*>", " ", text.lower())).split()


def test_every_kind_is_planted_with_the_contracted_verdict(demo):
    out, clips = demo
    assert [c.kind for c in clips].count("good") == N_GOOD
    assert [c.kind for c in clips].count("wrong_transcript") == N_WRONG
    assert {c.kind for c in clips} == set(CONTRACT)
    for clip in clips:
        assert (clip.expected_stage, clip.expected_reason) == CONTRACT[clip.kind], clip.name
        assert (out / clip.name).is_file() and clip.name.endswith(".mp4")
    assert len({c.name for c in clips}) == len(clips)


@pytest.mark.parametrize("kind", AUDIO_AND_VIDEO)
def test_clips_have_audio_and_video(demo, kind):
    for clip in clips_of(demo, kind):
        info = ffprobe(demo[0] / clip.name)
        assert info is not None, clip.name
        assert stream_types(info) == ["audio", "video"], clip.name


@pytest.mark.parametrize(("kind", "expected"), [("audio_only", ["audio"]), ("video_only", ["video"])])
def test_single_track_clips(demo, kind, expected):
    info = ffprobe(demo[0] / clips_of(demo, kind)[0].name)
    assert info is not None and stream_types(info) == expected


@pytest.mark.parametrize("kind", ["zero_byte", "not_a_video", "truncated"])
def test_unreadable_containers_fail_ffprobe(demo, kind):
    assert ffprobe(demo[0] / clips_of(demo, kind)[0].name) is None


@pytest.mark.parametrize("kind", ["good", "wrong_transcript", "too_short", "too_long", "noise_audio"])
def test_durations_match_the_plan(demo, kind):
    for clip in clips_of(demo, kind):
        info = ffprobe(demo[0] / clip.name)
        assert abs(float(info["format"]["duration"]) - clip.duration_s) <= 0.15, clip.name
    expected = {"too_short": 0.2, "too_long": 40.0, "noise_audio": 3.0}.get(kind)
    assert expected is None or clip.duration_s == pytest.approx(expected)


def test_resolutions(demo):
    for clip in demo[1]:
        info = ffprobe(demo[0] / clip.name)
        video = [s for s in (info or {}).get("streams", []) if s["codec_type"] == "video"]
        if video:
            size = (video[0]["width"], video[0]["height"])
            assert size == ((64, 48) if clip.kind == "tiny_resolution" else (320, 240)), clip.name


def test_truncated_faststart_has_its_header_but_only_part_of_its_media(demo):
    clip = clips_of(demo, "truncated_faststart")[0]
    info = ffprobe(demo[0] / clip.name)
    assert info is not None, "the moov atom at the front must survive the cut"
    assert abs(float(info["format"]["duration"]) - clip.duration_s) <= 0.15
    decoded_s = decoded_audio(demo[0] / clip.name).size / 16000
    assert decoded_s < 0.8 * clip.duration_s


def test_noise_clip_is_loud_white_noise(demo):
    audio = decoded_audio(demo[0] / clips_of(demo, "noise_audio")[0].name)
    rms_db = 20 * np.log10(np.sqrt(np.mean(np.square(audio))))
    assert abs(rms_db - (-12.0)) <= 3.0
    assert clips_of(demo, "noise_audio")[0].spoken_text is None


def test_speech_clips_are_never_digitally_silent(demo):
    # Room tone under the speech: the quietest 100 ms window must still carry some signal.
    audio = decoded_audio(demo[0] / clips_of(demo, "good")[0].name)
    windows = audio[: audio.size // 1600 * 1600].reshape(-1, 1600)
    quietest = np.sqrt(np.mean(np.square(windows), axis=1)).min()
    assert 10 ** (-70 / 20) < quietest < 10 ** (-35 / 20)


def test_sidecars_have_the_six_saber_fields(demo):
    out, clips = demo
    for clip in clips:
        sidecar = out / Path(clip.name).with_suffix(".json")
        if clip.kind in {"zero_byte", "not_a_video"}:
            continue
        if clip.kind == "malformed_annotation":
            with pytest.raises(json.JSONDecodeError):
                json.loads(sidecar.read_text())
            continue
        data = json.loads(sidecar.read_text())
        assert all(isinstance(data[k], str) and data[k].strip() for k in TEXT_FIELDS), clip.name
        assert data["audio_desc"]["speech_content"] == clip.annotated_text
        assert data["audio_desc"]["acoustic_feat"].strip()


def test_transcripts(demo):
    clips = demo[1]
    for clip in clips_of(demo, "good"):
        assert plain_words(clip.annotated_text) == plain_words(clip.spoken_text)
    for clip in clips_of(demo, "wrong_transcript"):
        spoken, annotated = set(plain_words(clip.spoken_text)), set(plain_words(clip.annotated_text))
        assert spoken != annotated and len(spoken & annotated) / len(spoken | annotated) < 0.3
    assert any("<" in (c.annotated_text or "") for c in clips), "no sound-event tag planted"
    assert not any(re.search(r"\d", c.spoken_text or "") for c in clips)


def test_sentence_pool():
    sentences = [s for group in SENTENCES.values() for s in group]
    assert len(sentences) >= 60 and len(set(sentences)) == len(sentences)
    for sentence in sentences:
        assert 6 <= len(sentence.split()) <= 14 and not re.search(r"\d", sentence), sentence


def test_expected_jsonl_round_trips(demo):
    out, clips = demo
    assert load_expected(out) == clips


class _Regenerated(Exception):
    """Raised by the writers that a cache hit must never reach."""


def test_cached_and_deterministic(demo, tmp_path, monkeypatch):
    out, clips = demo
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def regenerated(*args, **kwargs):
        raise _Regenerated

    with monkeypatch.context() as patch:
        # Everything that writes, speaks or encodes: clearing, rendering, espeak-ng, ffmpeg, the records.
        for module, name in [(demo_data, "_clear_previous"), (demo_data, "_render"), (demo_data, "write_clip"),
                             (demo_data, "synthesize_speech"), (demo_data, "_write_expected"),
                             (demo_media, "synthesize_speech"), (demo_media, "run_ffmpeg")]:
            patch.setattr(module, name, regenerated)
        assert generate_demo_set(out, n_good=N_GOOD, n_wrong=N_WRONG, seed=SEED) == clips
        with pytest.raises(_Regenerated):  # while a miss does reach them
            generate_demo_set(tmp_path / "miss", n_good=N_GOOD, n_wrong=N_WRONG, seed=SEED)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before, "a cache hit must not rewrite"
    generate_demo_set(tmp_path / "again", n_good=N_GOOD, n_wrong=N_WRONG, seed=SEED)
    assert (tmp_path / "again" / "expected.jsonl").read_text() == (out / "expected.jsonl").read_text()


def test_new_params_regenerate_and_drop_stale_clips(tmp_path):
    generate_demo_set(tmp_path, n_good=2, n_wrong=0, with_bad=False)
    (tmp_path / "notes.txt").write_text("not ours")
    clips = generate_demo_set(tmp_path, n_good=1, n_wrong=0, with_bad=False, seed=1)
    assert [c.name for c in clips] == ["good_000.mp4"]
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["good_000.mp4"]
    assert (tmp_path / "notes.txt").exists()


def test_synthesize_speech():
    speech = synthesize_speech("I can't believe you forgot my birthday again", voice="en+f3", pitch=60)
    assert speech.dtype == np.float32 and speech.ndim == 1
    assert speech.size / 16000 > 0.5
    assert 0.05 < float(np.max(np.abs(speech))) <= 1.0
    slow = synthesize_speech("I can't believe you forgot my birthday again", speed=130, sample_rate=8000)
    assert slow.size / 8000 > speech.size / 16000  # slower speech lasts longer, at any sample rate


def test_write_clip_reports_ffmpeg_errors_and_leaves_nothing_behind(tmp_path):
    # libx264 with yuv420p rejects odd frame sizes: a real ffmpeg failure to surface.
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        write_clip(tmp_path / "odd.mp4", speech=None, duration_s=1.0, size=(65, 49))
    assert list(tmp_path.iterdir()) == []


def test_launcher_prints_a_summary(tmp_path):
    script = Path(__file__).resolve().parents[2] / "jobs" / "make_demo_data.py"
    cmd = [sys.executable, str(script), "--out", str(tmp_path), "--n-good", "1", "--n-wrong", "0", "--no-bad"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"1 demo clips in {tmp_path.resolve()}: good=1"
