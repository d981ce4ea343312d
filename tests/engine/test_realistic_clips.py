"""engine.devkit.realistic_clips writes what it promises (H.264 1280x720, AAC 48 kHz stereo, 3-8 s, a sidecar whose
transcript is what was said), the same bytes for the same seed; and the peer benchmark's two sides (the probe stage
here, Data-Juicer's duration + resolution filters in their own venv, when that venv exists) reach the same verdicts
on such a clip on either side of a threshold."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import av
import pytest

from engine.core.config import MediaConfig
from engine.devkit.demo_data import load_expected
from engine.devkit.peer_benchmark import PeerProcess, engine_pass
from engine.devkit.realistic_clips import _plan_set, generate_realistic_set
from engine.stages.probe import ProbeStage

SEED = 0  # its first clip is planned at 3.18 s (one saying of its sentence makes it 4.5 s): cheap to render
DJ_PYTHON = Path(os.environ.get("DJ_PYTHON", "/work/venvs/dj/bin/python"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("realistic")
    generate_realistic_set(out, count=1, seed=SEED)
    return out


def test_clip_is_720p_h264_with_48khz_stereo_aac_of_3_to_8_seconds(clip_dir: Path) -> None:
    (clip,) = load_expected(clip_dir)
    with av.open(str(clip_dir / clip.name)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.width, video.codec_context.height) == ("h264", 1280, 720)
        assert float(video.average_rate) == 30
        assert (audio.codec_context.name, audio.codec_context.sample_rate, audio.codec_context.channels) == (
            "aac", 48_000, 2)
        duration = container.duration / av.time_base
    assert 3.0 <= duration <= 8.0
    assert duration == pytest.approx(clip.duration_s, abs=0.05)  # as recorded: lengthened to fit one saying


def test_sidecar_transcript_is_what_was_said(clip_dir: Path) -> None:
    (clip,) = load_expected(clip_dir)
    sidecar = json.loads((clip_dir / clip.name).with_suffix(".json").read_text())
    sentence = _plan_set(1, SEED)[0].sentence
    assert sidecar["audio_desc"]["speech_content"] == clip.spoken_text
    assert clip.spoken_text.startswith(sentence) and clip.kind == "good" and clip.expected_stage is None


def test_same_seed_same_bytes_and_a_rerun_is_cached(clip_dir: Path, tmp_path: Path) -> None:
    mp4 = clip_dir / load_expected(clip_dir)[0].name
    stamp = mp4.stat().st_mtime_ns
    generate_realistic_set(clip_dir, count=1, seed=SEED)
    assert mp4.stat().st_mtime_ns == stamp  # cached: not rewritten
    generate_realistic_set(tmp_path, count=1, seed=SEED)
    assert hashlib.sha256((tmp_path / mp4.name).read_bytes()).digest() == hashlib.sha256(mp4.read_bytes()).digest()
    assert _plan_set(3, SEED) == _plan_set(3, SEED) and _plan_set(3, SEED) != _plan_set(3, SEED + 1)


@pytest.mark.skipif(not DJ_PYTHON.exists(), reason=f"no Data-Juicer venv at {DJ_PYTHON} (set DJ_PYTHON)")
def test_probe_stage_and_data_juicer_filters_agree_around_the_thresholds(clip_dir: Path, tmp_path: Path) -> None:
    path = str(clip_dir / load_expected(clip_dir)[0].name)
    duration = load_expected(clip_dir)[0].duration_s
    cases = [dict(min_duration_s=0.5, max_duration_s=30.0, min_short_side=96),  # kept
             dict(min_duration_s=duration + 1, max_duration_s=30.0, min_short_side=96),  # too short
             dict(min_duration_s=0.5, max_duration_s=duration - 1, min_short_side=96),  # too long
             dict(min_duration_s=0.5, max_duration_s=30.0, min_short_side=721)]  # 720 rows: too low
    peer = PeerProcess(DJ_PYTHON, tmp_path / "peer.log")
    try:
        for case, expected in zip(cases, (True, False, False, False), strict=True):
            media = MediaConfig(isolation="none", **case)
            engine = engine_pass(ProbeStage(media), [path])
            peer.call(cmd="setup", paths=[path], min_duration=media.min_duration_s,
                      max_duration=media.max_duration_s, min_side=media.min_short_side, work=str(tmp_path / "dj"))
            for way in ("ops_ffmpeg", "ops_av"):
                assert peer.call(cmd="run", way=way)["kept"] == engine["kept"] == [expected], (case, way)
    finally:
        peer.close()
