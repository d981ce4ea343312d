"""Packing short clips into shared Whisper windows: the layout and the word-to-clip assignment, worked by hand."""

from types import SimpleNamespace

import numpy as np
import pytest

from engine.core.config import AsrConfig, EngineConfig
from engine.models.backends.whisper import Piece, assign_words, lay_out, transcribe_batch

SR = 16000


def _clips(*seconds: float) -> list[np.ndarray]:
    """Clip k is constant k + 1, so where each one landed can be read off the laid-out audio."""
    return [np.full(round(s * SR), k + 1.0, np.float32) for k, s in enumerate(seconds)]


def test_short_clips_share_windows_and_long_ones_get_their_own():
    clips = _clips(4.5, 5, 8, 20, 0, 35, 3)
    layout = lay_out(clips, pack_s=30, gap_s=1)
    # window 0: clips 0, 1, 2 at 0-4.5, 5.5-10.5, 11.5-19.5 (4.5 + 1 + 5 + 1 + 8 = 19.5 s); clip 3 (20 s) does not
    # fit (19.5 + 1 + 20 > 30): window 1 at the next whole second, 20-40. Clip 4 is empty: nowhere. Clip 5 (35 s)
    # is longer than a window: pieces of 30 s (40-70) and 5 s (70-75) in windows of their own. Clip 6: 75-78.
    assert layout.windows == [(0.0, 19.5), (20.0, 40.0), (40.0, 70.0), (70.0, 75.0), (75.0, 78.0)]
    assert layout.pieces == [[Piece(0, 0.0, 4.5), Piece(1, 5.5, 10.5), Piece(2, 11.5, 19.5)],
                             [Piece(3, 20.0, 40.0)], [Piece(5, 40.0, 70.0)], [Piece(5, 70.0, 75.0)],
                             [Piece(6, 75.0, 78.0)]]
    audio = layout.audio
    assert audio.size == 78 * SR
    expected = np.zeros(78 * SR, np.float32)
    for value, (start, end) in ((1, (0, 4.5)), (2, (5.5, 10.5)), (3, (11.5, 19.5)), (4, (20, 40)), (6, (40, 75)),
                                (7, (75, 78))):
        expected[round(start * SR):round(end * SR)] = value
    assert np.array_equal(audio, expected)  # the gaps and the padding to whole seconds are silence


def test_packing_off_gives_every_clip_its_own_windows():
    layout = lay_out(_clips(1.5, 0, 31), pack_s=0)
    # clip 0 at 0 s (next window rounded up to 2 s); clip 1 empty: no window; clip 2: 30 s at 2 s, 1 s at 32 s
    assert layout.windows == [(0.0, 1.5), (2.0, 32.0), (32.0, 33.0)]
    assert [[p.clip for p in pieces] for pieces in layout.pieces] == [[0], [2], [2]]
    assert layout.audio.size == 33 * SR


def test_a_shorter_pack_and_no_gap():
    # pack 10 s, no gap: 4 + 6 = 10 fits exactly; 3 s opens the next window at 10 s; 7 + 3 = 10 fits again;
    # 11 s is longer than the pack: a window of its own (20-31) even though it is under 30 s.
    layout = lay_out(_clips(4, 6, 3, 7, 11), pack_s=10, gap_s=0)
    assert layout.windows == [(0.0, 10.0), (10.0, 20.0), (20.0, 31.0)]
    assert [[(p.clip, p.start, p.end) for p in w] for w in layout.pieces] == [
        [(0, 0.0, 4.0), (1, 4.0, 10.0)], [(2, 10.0, 13.0), (3, 13.0, 20.0)], [(4, 20.0, 31.0)]]


def test_each_word_goes_to_the_clip_holding_its_midpoint():
    pieces = [Piece(0, 0.0, 4.5), Piece(1, 5.5, 10.5), Piece(2, 11.5, 19.5)]
    words = [(" Hello", 0.2, 0.6),     # midpoint 0.4: inside clip 0
             (" world.", 4.0, 5.2),    # 4.6, in the gap: 0.1 s after clip 0, 0.9 s before clip 1 -> clip 0
             (" Next", 5.0, 5.8),      # 5.4, in the gap: 0.9 s after clip 0, 0.1 s before clip 1 -> clip 1
             (" one", 10.4, 11.8),     # 11.1, in the gap: 0.6 s after clip 1, 0.4 s before clip 2 -> clip 2
             (" last", 18.0, 21.0)]    # 19.5, clip 2's end (past the last piece it would still be clip 2)
    found = assign_words([SimpleNamespace(word=w, start=s, end=e) for w, s, e in words], pieces)
    assert found == {0: [" Hello", " world."], 1: [" Next"], 2: [" one", " last"]}
    assert assign_words([SimpleNamespace(word=" far", start=30.0, end=31.0)], pieces) == {2: [" far"]}


def test_pack_settings_are_checked():
    assert AsrConfig().pack_seconds == 30 and AsrConfig(pack_seconds=0).pack_seconds == 0  # on unless turned off
    with pytest.raises(ValueError, match="pack_seconds"):
        AsrConfig(pack_seconds=31)
    with pytest.raises(ValueError, match="pack_gap_seconds"):
        AsrConfig(pack_gap_seconds=-1)


def test_whisper_threads_follow_the_asr_actor_cpus():
    def threads(**sections) -> int | None:
        return EngineConfig(input="in", output="out", **sections).asr.cpu_threads

    assert threads(resources={"asr_num_cpus": 4}) == 4  # production: 4 CPUs reserved, 4 threads used
    assert threads(resources={"asr_num_cpus": 2.5}) == 2
    assert threads(resources={"asr_num_cpus": 0.75}) == 1  # a fractional share still gets a thread
    assert threads(asr={"cpu_threads": 2}, resources={"asr_num_cpus": 4}) == 2  # set: kept
    assert threads(asr={"cpu_threads": 0}) == 0  # CTranslate2's default


class _EarlyEndPipeline:
    """Stands in for BatchedInferencePipeline: a window of one clip (clip k is constant k + 1) comes back as
    "clip<k>"; a shared window comes back with its first clip's words only, as when Whisper ends the window at the
    first pause. Records each call's windows and options."""

    calls: list[dict] = []

    def __init__(self, model) -> None:
        self.model = model

    def transcribe(self, audio, **options):
        _EarlyEndPipeline.calls.append(options)
        segments = []
        for window in options["clip_timestamps"]:
            start, end = window["start"], window["end"]
            clip = round(float(audio[round(start * SR)])) - 1
            seek = round(start * self.model.frames_per_second)
            word = SimpleNamespace(word=f" clip{clip}", start=start, end=min(end, start + 0.5))
            segments.append(SimpleNamespace(seek=seek, text=word.word, words=[word]))
        return iter(segments), SimpleNamespace(language="en")


def test_a_packed_clip_that_gets_no_words_is_decoded_again_alone(monkeypatch):
    monkeypatch.setattr("engine.models.backends.whisper.BatchedInferencePipeline", _EarlyEndPipeline)
    _EarlyEndPipeline.calls = []
    model = SimpleNamespace(model=SimpleNamespace(is_multilingual=False), frames_per_second=100)
    clips = _clips(4, 4, 40)  # clips 0 and 1 share a window; clip 2 (40 s) has two windows of its own
    out = transcribe_batch(model, clips, None, 1, 4, pack_s=30, gap_s=1)
    # clip 1's window-mate took the window's only words: clip 1 is decoded again in a window of its own; clip 2's
    # two 30 s pieces are not packed and each gives its text, so it is not decoded again.
    assert [t.text for t in out] == ["clip0", "clip1", "clip2 clip2"]
    first, again = _EarlyEndPipeline.calls
    assert len(first["clip_timestamps"]) == 3 and again["clip_timestamps"] == [{"start": 0.0, "end": 4.0}]
    # Shared windows are decoded with timestamp tokens (Whisper then goes on after a pause), windows of one clip
    # without them; words are asked for only where they must be split between clips.
    assert (first["without_timestamps"], first["word_timestamps"]) == (False, True)
    assert (again["without_timestamps"], again["word_timestamps"]) == (True, False)
