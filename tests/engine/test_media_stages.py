"""Probe, decode and noise stages on real generated media, checked against each planted file's kind."""

import io
import json
import math

import numpy as np
import pytest

from engine.core.config import MediaConfig, NoiseConfig
from engine.core.media import decode_jpeg, sample_times, scaled_size
from engine.core.schema import new_row
from engine.stages.annotation_check import AnnotationCheckStage
from engine.stages.base import RowStage, StageInputError
from engine.stages.decode import DecodeStage, audio_from_row
from engine.stages.noise import NoiseFilterStage
from engine.stages.probe import ProbeStage


def _run(rows, *stages):
    for stage in stages:
        rows = stage(rows)
    return rows


def _rows(folder, clips):
    rows = []
    for clip in clips:
        sidecar = (folder / clip.name).with_suffix(".json")
        rows.append(new_row(str(folder / clip.name), lang="en",
                            annotation_uri=str(sidecar) if sidecar.exists() else None))
    return rows


def test_each_planted_file_is_rejected_where_and_why_it_should_be(small_set):
    folder, clips = small_set
    media = MediaConfig()
    rows = _run(_rows(folder, clips), AnnotationCheckStage(), ProbeStage(media), DecodeStage(media),
                NoiseFilterStage(NoiseConfig()))
    assert len(rows) == len(clips)
    for clip, row in zip(clips, rows, strict=True):
        if clip.expected_stage in (None, "asr"):  # ASR is tested separately
            assert row["status"] == "kept", (clip.name, row["reject_stage"], row["reject_reason"], row["reject_detail"])
        else:
            got = (row["status"], row["reject_stage"], row["reject_reason"])
            assert got == ("rejected", clip.expected_stage, clip.expected_reason), (clip.name, row["reject_detail"])


def test_stage_declares_what_it_produces(small_set):
    """Every declared column holds the value the known good clip implies, worked out from how it was made."""
    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    media = MediaConfig()  # 2 fps, at most 40 frames, long side at most 448: a 320x240 clip is not rescaled
    stages = [AnnotationCheckStage(), ProbeStage(media), DecodeStage(media), NoiseFilterStage(NoiseConfig())]
    row = _run(_rows(folder, [good]), *stages)[0]
    assert row["status"] == "kept", (row["reject_stage"], row["reject_reason"], row["reject_detail"])

    # The generator drew a 320x240 face at 10 fps (libx264) over 16 kHz mono speech (aac): the speech
    # peak-normalised to 0.7 after 0.3 s of -50 dBFS room tone, the length rounded up to whole frames.
    sidecar = json.loads((folder / good.name).with_suffix(".json").read_text())
    source_frames = round(good.duration_s * 10)
    duration = source_frames / 10
    n_frames = source_frames // 5  # 2 fps out of 10: one sampled frame per 5 source frames, rounded down
    audio = audio_from_row(row)

    def frames_ok(frames):
        assert len(frames) == n_frames
        for data in frames:
            assert data[:2] == b"\xff\xd8"  # JPEG start-of-image
            assert decode_jpeg(data).shape == (240, 320, 3)

    def times_ok(times):
        # n_frames uniform slots over the clip, each snapped down onto the 10 fps grid of decoded frames.
        assert len(times) == n_frames and times == sorted(set(times))
        for k, t in enumerate(times):
            centre = (k + 0.5) * duration / n_frames
            assert t == pytest.approx(round(t * 10) / 10) and centre - 0.1 - 1e-6 < t <= centre + 1e-6, (k, t)

    def audio_ok(pcm):
        assert len(pcm) == 4 * audio.size  # float32 samples
        # AAC codes 1024-sample frames: the decoded track is the clip's length rounded up to whole frames.
        assert 0 <= audio.size - round(duration * 16000) < 1024
        assert float(np.max(np.abs(audio))) == pytest.approx(0.7, abs=0.05)
        lead_in_dbfs = 10 * np.log10(np.mean(np.square(audio[: int(0.2 * 16000)], dtype=np.float64)))
        assert -56 < lead_in_dbfs < -44  # the room tone: neither speech nor digital silence

    def audio_track_ok(seconds):
        assert 0 <= seconds - duration < 1024 / 16000  # the AAC track's own length: whole 1024-sample frames

    def snr_ok(snr):
        # Quiet frames are the -50 dBFS room tone and no frame can exceed the 0.7 peak (-3 dBFS): SNR < 47 dB.
        assert math.isfinite(snr) and 25 < snr < 47

    checks = {  # column: (type, expected value or check)
        "video_desc": (str, sidecar["video_desc"]),
        "speech_content": (str, good.annotated_text),
        "acoustic_feat": (str, sidecar["audio_desc"]["acoustic_feat"]),
        "facial_exp_desc": (str, sidecar["facial_exp_desc"]),
        "body_lang_desc": (str, sidecar["body_lang_desc"]),
        "sentiment_analysis": (str, sidecar["sentiment_analysis"]),
        "annotation_source": (str, "sidecar"),
        "duration_s": (float, pytest.approx(duration, abs=0.05)),
        "width": (int, 320),
        "height": (int, 240),
        "fps": (float, 10.0),
        "has_video": (bool, True),
        "has_audio": (bool, True),
        "video_codec": (str, "h264"),
        "audio_codec": (str, "aac"),
        "rotation": (int, 0),
        "video_track_s": (float, pytest.approx(duration, abs=1e-3)),  # the mp4 index's own length per track
        "audio_track_s": (float, audio_track_ok),
        "audio_track": (int, 0),
        "audio_channels": (int, 1),
        "n_frames": (int, n_frames),
        "decoded_duration_s": (float, pytest.approx(duration)),  # the video's: frames of 0.1 s
        "decoder": (str, "decord"),
        "audio_offset_s": (float, 0.0),  # both tracks start at 0 (the AAC priming is cut by the mp4's edit list)
        "audio_covered_s": (float, pytest.approx(duration)),  # audio under every frame
        "frames_jpeg": (list, frames_ok),
        "frame_times": (list, times_ok),
        "audio_pcm": (bytes, audio_ok),
        "snr_db": (float, snr_ok),
    }
    assert sorted(c for stage in stages for c in stage.produces) == sorted(checks), "a declared column is unchecked"
    assert sidecar["audio_desc"]["speech_content"] == good.annotated_text
    for stage in stages:
        for column in stage.produces:
            kind, expected = checks[column]
            value = row[column]
            assert isinstance(value, kind), (stage.name, column, value)
            if callable(expected):
                expected(value)
            else:
                assert value == expected, (stage.name, column, value)


def test_decode_samples_frames_at_fps_and_audio_at_16k(small_set):
    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    media = MediaConfig(fps=2.0, max_frames=40, max_frame_side=160)
    row = _run(_rows(folder, [good]), ProbeStage(media), DecodeStage(media))[0]
    expected_frames = max(2, int(row["duration_s"] * 2.0))
    assert row["n_frames"] == len(row["frames_jpeg"]) == expected_frames
    frame = decode_jpeg(row["frames_jpeg"][0])
    assert frame.shape == (120, 160, 3)  # 320x240 scaled to a 160 long side
    audio = audio_from_row(row)
    assert abs(audio.size / 16000 - row["duration_s"]) < 0.1
    assert 0.01 < float(np.max(np.abs(audio))) <= 1.0
    assert row["frame_times"] == sorted(row["frame_times"])


def test_frame_sampling_math():
    assert sample_times(3.0, 2.0, 40) == pytest.approx([0.25, 0.75, 1.25, 1.75, 2.25, 2.75])
    capped = sample_times(30.0, 2.0, 40)  # 60 frames at 2 fps capped to 40, spread over the clip
    assert len(capped) == 40 and capped[0] == pytest.approx(0.375) and capped[-1] == pytest.approx(29.625)
    assert len(sample_times(0.6, 2.0, 40)) == 2
    assert scaled_size(1920, 1080, 448) == (448, 252)
    assert scaled_size(100, 60, 448) == (100, 60)


def test_container_claiming_more_than_it_holds_is_a_duration_mismatch(small_set):
    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    row = _run(_rows(folder, [good]), ProbeStage(MediaConfig()))[0]
    row["duration_s"] *= 2  # as a container whose header lies about its length
    row = DecodeStage(MediaConfig())([row])[0]
    assert (row["status"], row["reject_reason"]) == ("rejected", "duration_mismatch")


@pytest.mark.parametrize("track", ["video", "audio"])
def test_a_track_holding_less_than_its_own_declared_length_is_a_duration_mismatch(small_set, track):
    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    row = _run(_rows(folder, [good]), ProbeStage(MediaConfig()))[0]
    declared = row[f"{track}_track_s"]
    row[f"{track}_track_s"] = declared * 2  # as a track whose index claims twice what it holds
    row = DecodeStage(MediaConfig())([row])[0]
    assert (row["status"], row["reject_reason"]) == ("rejected", "duration_mismatch")
    kind, decoded, rest = row["reject_detail"].removeprefix("decoded ").split(" ", 2)
    assert (kind, rest) == (track, f"of its declared {2 * declared:.2f}s")  # only this track fell short
    assert 0 <= float(decoded.removesuffix("s")) - declared < 0.07  # all of it decoded (AAC: whole 64 ms frames)


def test_audio_is_put_on_the_video_clock():
    from engine.core.media import on_video_clock

    audio = np.arange(1, 6, dtype=np.float32)
    assert on_video_clock(audio, 0.2, 10).tolist() == [0, 0, 1, 2, 3, 4, 5]  # starts 0.2 s late: 2 samples padded
    assert on_video_clock(audio, -0.2, 10).tolist() == [3, 4, 5]  # starts 0.2 s early: cut
    assert on_video_clock(audio, 0.04, 10).tolist() == audio.tolist()  # less than half a sample
    assert on_video_clock(audio[:0], 0.5, 10).size == 0  # no audio stays no audio (the noise stage says so)


def test_remote_bytes_path_gives_the_same_probe(small_set, monkeypatch):
    import engine.stages.probe as probe_module

    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    local = _run(_rows(folder, [good]), ProbeStage(MediaConfig()))[0]
    monkeypatch.setattr(probe_module, "open_source", lambda uri: io.BytesIO((folder / good.name).read_bytes()))
    remote = _run(_rows(folder, [good]), ProbeStage(MediaConfig()), DecodeStage(MediaConfig()))[0]
    assert (remote["duration_s"], remote["width"], remote["status"]) == (local["duration_s"], local["width"], "kept")


class _Exploding(RowStage):
    name = "boom"

    def process_row(self, row):
        if row["source_uri"].endswith("bad"):
            raise ZeroDivisionError("bug on one clip")
        row["label"] = "ok"


def test_an_unexpected_error_on_one_clip_is_recorded_not_raised():
    rows = _Exploding()([new_row("/a/good"), new_row("/a/bad"), new_row("/a/good2")])
    assert [r["status"] for r in rows] == ["kept", "rejected", "kept"]
    assert rows[1]["reject_reason"] == "internal_error"
    assert rows[1]["reject_detail"] == "ZeroDivisionError: bug on one clip"


def test_missing_columns_are_named():
    class Needs(RowStage):
        name = "needs"
        requires = ("nonexistent",)

    with pytest.raises(StageInputError, match="nonexistent"):
        Needs()([new_row("/a")])
