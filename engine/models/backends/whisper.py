"""faster-whisper loading and transcription (CTranslate2 Whisper), apart from the stage logic.

`transcribe_batch` decodes many clips in one batched forward pass with faster-whisper's
BatchedInferencePipeline: the clips are laid end to end, each starting on a whole second, and handed over as
`clip_timestamps`, so each clip (or each 30 s piece of a longer one) is one row of the encoder and decoder
batch; the segments come back tagged with their piece's start (`seek`), which maps them to their clip.
`transcribe` is the one-clip-at-a-time path (WhisperModel.transcribe), kept as the benchmark's baseline.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
                        cpu_threads=config.cpu_threads)


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
                     batch_size: int) -> list[Transcript]:
    """Transcripts of `clips` (16 kHz float32, all in `language`; None: English-only models only), decoded
    `batch_size` pieces at a time. Empty clips get an empty transcript without a model call."""
    if language is None and model.model.is_multilingual:
        raise ValueError("transcribe_batch needs the clips' language with a multilingual model (detect_language)")
    audio, stamps, owners = _lay_end_to_end(clips)
    texts: list[list[str]] = [[] for _ in clips]
    if stamps:
        pipeline = BatchedInferencePipeline(model)
        segments, info = pipeline.transcribe(
            audio, language=language, beam_size=beam_size, batch_size=batch_size, clip_timestamps=stamps,
            vad_filter=False, without_timestamps=True)
        language = info.language
        by_seek = {int(round(stamp["start"] * model.frames_per_second)): owner
                   for stamp, owner in zip(stamps, owners, strict=True)}
        for segment in segments:
            texts[by_seek[segment.seek]].append(segment.text.strip())
    return [Transcript(text=" ".join(t for t in parts if t), language=language or "en") for parts in texts]


def _lay_end_to_end(clips: Sequence[np.ndarray]) -> tuple[np.ndarray, list[dict[str, float]], list[int]]:
    """One array holding every clip, each piece of at most 30 s starting on a whole second (so its start in
    seconds, and the `seek` faster-whisper derives from it, are exact); returns (audio, stamps, owning clip)."""
    piece = _PIECE_S * SAMPLE_RATE
    placements: list[tuple[int, int, int, int]] = []  # (clip, first sample in clip, length, start in audio)
    position = 0
    for index, clip in enumerate(clips):
        for first in range(0, len(clip), piece):
            length = min(piece, len(clip) - first)
            placements.append((index, first, length, position))
            position += -(-length // SAMPLE_RATE) * SAMPLE_RATE  # up to the next whole second
    audio = np.zeros(position, dtype=np.float32)
    for index, first, length, start in placements:
        audio[start:start + length] = clips[index][first:first + length]
    stamps = [{"start": start / SAMPLE_RATE, "end": (start + length) / SAMPLE_RATE}
              for _, _, length, start in placements]
    return audio, stamps, [index for index, *_ in placements]
