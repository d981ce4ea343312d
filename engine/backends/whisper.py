"""faster-whisper loading and transcription (CTranslate2 Whisper), apart from the stage logic."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

from engine.config import AsrConfig

_PACKAGE_PREFIX = "package:"


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
    # condition_on_previous_text=False: clips are short and independent; conditioning only helps
    # hallucinated repetitions propagate.
    segments, info = model.transcribe(audio, language=language, beam_size=beam_size,
                                      condition_on_previous_text=False, vad_filter=False)
    text = " ".join(segment.text.strip() for segment in segments).strip()
    return Transcript(text=text, language=info.language)
