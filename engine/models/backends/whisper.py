"""faster-whisper loading and transcription (CTranslate2 Whisper), apart from the stage logic.

`transcribe_batch` decodes many clips in one batched call of faster-whisper's BatchedInferencePipeline. The clips
are laid end to end in windows of at most 30 s (`lay_out`), each window starting on a whole second and handed over
as one `clip_timestamps` entry, so a window is one row of the encoder and decoder batch and its segments come back
tagged with its start (`seek`). Whisper's encoder costs the same for 4 s of speech as for 30 s (the input is padded
to 30 s), so short clips are packed several to a window with a little silence between them; the window is decoded
once with word timestamps and each word goes back to the clip that holds its midpoint (`assign_words`). The batched
pipeline never conditions a window on an earlier window's text (it fixes condition_on_previous_text=False) and
decodes one language per call; the clips inside one window are one decoding, so there a clip's words do precede
the next clip's (measured: WER verdicts unchanged, see AsrConfig.pack_seconds).
`transcribe` is the one-clip-at-a-time path (WhisperModel.transcribe), kept as the benchmark's baseline.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel

from engine.core.config import AsrConfig

_PACKAGE_PREFIX = "package:"
SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects, and what the engine decodes to
_PIECE_S = 30  # Whisper's window: a longer clip is cut into pieces of at most this many seconds


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str


def resolve_model(name: str) -> str:
    """A model folder, a faster-whisper size name, or `package:NAME` for a model shipped in a PyPI package."""
    if not name.startswith(_PACKAGE_PREFIX):
        return name
    package = name[len(_PACKAGE_PREFIX):]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"asr.model: package {package!r} is not installed")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.bin").exists():
        raise ValueError(f"asr.model: package {package!r} has no CTranslate2 model in {folder}")
    return str(folder)


def load_whisper(config: AsrConfig) -> WhisperModel:
    return WhisperModel(resolve_model(config.model), device=config.device, compute_type=config.compute_type,
                        cpu_threads=1 if config.cpu_threads is None else config.cpu_threads)


def transcribe(model: WhisperModel, audio: np.ndarray, language: str | None, beam_size: int) -> Transcript:
    """One clip through WhisperModel.transcribe (sequential decoding with temperature fallback)."""
    # condition_on_previous_text=False: clips are short and independent; conditioning only helps
    # hallucinated repetitions propagate.
    segments, info = model.transcribe(audio, language=language, beam_size=beam_size,
                                      condition_on_previous_text=False, vad_filter=False)
    text = " ".join(segment.text.strip() for segment in segments).strip()
    return Transcript(text=text, language=info.language)


def detect_language(model: WhisperModel, audio: np.ndarray) -> str:
    """The clip's language by Whisper's own detection (first 30 s); English for an English-only model."""
    if not model.model.is_multilingual:
        return "en"
    language, _, _ = model.detect_language(audio=audio)
    return language


def transcribe_batch(model: WhisperModel, clips: Sequence[np.ndarray], language: str | None, beam_size: int,
                     batch_size: int, pack_s: float = 0.0, gap_s: float = 1.0) -> list[Transcript]:
    """Transcripts of `clips` (16 kHz float32, all in `language`; None: English-only models only), decoded
    `batch_size` windows at a time. With `pack_s` > 0, clips of at most `pack_s` seconds share windows of up to
    `pack_s` s (`gap_s` of silence between two) and each word goes back to its clip by its timestamps;
    0: one window per clip (or per 30 s piece). A packed clip that gets no words is decoded again in a window of
    its own. Empty clips get an empty transcript without a model call."""
    if language is None and model.model.is_multilingual:
        raise ValueError("transcribe_batch needs the clips' language with a multilingual model (detect_language)")
    texts, language, unheard = _decode_layout(model, lay_out(clips, pack_s, gap_s), len(clips), language, beam_size,
                                              batch_size)
    if unheard:
        again, language, _ = _decode_layout(model, lay_out([clips[i] for i in unheard]), len(unheard), language,
                                            beam_size, batch_size)
        for clip, text in zip(unheard, again, strict=True):
            texts[clip] = text
    return [Transcript(text=" ".join(t for t in parts if t), language=language or "en") for parts in texts]


def _decode_layout(model: WhisperModel, layout: Layout, count: int, language: str | None, beam_size: int,
                   batch_size: int) -> tuple[list[list[str]], str | None, list[int]]:
    """Each clip's text pieces, the language, and the clips of shared windows that got no words."""
    texts: list[list[str]] = [[] for _ in range(count)]
    packed = [len(pieces) > 1 for pieces in layout.pieces]
    if not layout.windows:
        return texts, language, []
    # A packed window is decoded with timestamp tokens: without them Whisper tends to end the window at the first
    # pause, so the clips after it came back empty (2 of the 48 demo clips, packed two by two). With timestamps it
    # goes on to the next utterance, as in its training.
    segments, info = BatchedInferencePipeline(model).transcribe(
        layout.audio, language=language, beam_size=beam_size, batch_size=batch_size,
        clip_timestamps=[{"start": start, "end": end} for start, end in layout.windows],
        vad_filter=False, without_timestamps=not any(packed), word_timestamps=any(packed))
    by_seek = {int(round(start * model.frames_per_second)): k for k, (start, _) in enumerate(layout.windows)}
    for segment in segments:
        window = by_seek[segment.seek]
        pieces = layout.pieces[window]
        if not packed[window]:
            texts[pieces[0].clip].append(segment.text.strip())
            continue
        for clip, words in assign_words(segment.words or [], pieces).items():
            texts[clip].append("".join(words).strip())
    unheard = [piece.clip for window, pieces in enumerate(layout.pieces) if packed[window]
               for piece in pieces if not any(texts[piece.clip])]
    return texts, info.language, unheard


@dataclass(frozen=True)
class Piece:
    """Where a clip (or a 30 s piece of a longer one) lies in the laid-out audio, in seconds."""

    clip: int
    start: float
    end: float


@dataclass(frozen=True)
class Layout:
    audio: np.ndarray
    windows: list[tuple[float, float]]  # (start, end) in seconds; each starts on a whole second
    pieces: list[list[Piece]]  # the pieces in each window, in order


def lay_out(clips: Sequence[np.ndarray], pack_s: float = 0.0, gap_s: float = 1.0) -> Layout:
    """One array holding every clip, cut into windows of at most 30 s that each start on a whole second (so the
    window's start in seconds and the `seek` faster-whisper derives from it are exact). With `pack_s` > 0, clips of
    at most `pack_s` s are packed in order into windows of at most `pack_s` s, `gap_s` of silence between two;
    longer clips (and every clip with `pack_s` 0) get windows of their own, one per 30 s piece."""
    piece, gap, pack = _PIECE_S * SAMPLE_RATE, round(gap_s * SAMPLE_RATE), round(min(pack_s, _PIECE_S) * SAMPLE_RATE)
    windows: list[list[tuple[int, int, int]]] = []  # per window: (clip, first sample in clip, length)
    fill = pack + 1  # samples used in the open window; more than `pack`: none open
    for index, clip in enumerate(clips):
        if len(clip) == 0:
            continue
        if len(clip) <= pack and fill + gap + len(clip) <= pack:
            windows[-1].append((index, 0, len(clip)))
            fill += gap + len(clip)
            continue
        for first in range(0, len(clip), piece):
            windows.append([(index, first, min(piece, len(clip) - first))])
        fill = len(clip) if len(clip) <= pack else pack + 1
    return _place(clips, windows, gap)


def _place(clips: Sequence[np.ndarray], windows: list[list[tuple[int, int, int]]], gap: int) -> Layout:
    bounds, pieces, placed = [], [], []
    position = 0  # first sample of the next window, always a whole second
    for window in windows:
        offset, in_window = position, []
        for clip, first, length in window:
            placed.append((clip, first, length, offset))
            in_window.append(Piece(clip, offset / SAMPLE_RATE, (offset + length) / SAMPLE_RATE))
            offset += length + gap
        end = offset - gap
        bounds.append((position / SAMPLE_RATE, end / SAMPLE_RATE))
        pieces.append(in_window)
        position += -(-(end - position) // SAMPLE_RATE) * SAMPLE_RATE  # up to the next whole second
    audio = np.zeros(position, dtype=np.float32)
    for clip, first, length, start in placed:
        audio[start:start + length] = clips[clip][first:first + length]
    return Layout(audio, bounds, pieces)


def assign_words(words: Iterable[Any], pieces: Sequence[Piece]) -> dict[int, list[str]]:
    """Each word (faster-whisper's Word: `word`, `start`, `end` in seconds) to the clip whose piece holds the
    word's midpoint, or the nearest piece when the midpoint falls in a gap; clip -> its words in order."""
    out: dict[int, list[str]] = {}
    for word in words:
        middle = (word.start + word.end) / 2
        nearest = min(pieces, key=lambda p: max(p.start - middle, middle - p.end, 0.0))
        out.setdefault(nearest.clip, []).append(word.word)
    return out
