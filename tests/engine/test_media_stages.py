"""Probe, decode and noise stages on real generated media, checked against each planted file's kind."""

import io

import numpy as np
import pytest

from engine.config import MediaConfig, NoiseConfig
from engine.media import decode_jpeg, sample_times, scaled_size
from engine.schema import new_row
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
    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    media = MediaConfig()
    stages = [AnnotationCheckStage(), ProbeStage(media), DecodeStage(media), NoiseFilterStage(NoiseConfig())]
    row = _run(_rows(folder, [good]), *stages)[0]
    for stage in stages:
        for column in stage.produces:
            assert row[column] is not None, (stage.name, column)


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
