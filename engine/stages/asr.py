"""ASR with faster-whisper and the WER (CER for Chinese) check against the annotated speech content."""

from __future__ import annotations

from engine.backends.whisper import load_whisper, transcribe
from engine.config import AsrConfig
from engine.media import MediaError
from engine.stages.base import Row, RowStage
from engine.stages.decode import audio_from_row
from engine.text import error_rate, normalise


class AsrWerFilterStage(RowStage):
    """Transcribes the decoded audio and rejects clips whose annotated transcript disagrees with it.

    Clips without annotated speech keep their transcript with no error rate (nothing to check against).
    """

    name = "asr"
    requires = ("audio_pcm", "speech_content", "lang")
    produces = ("asr_text", "asr_language", "asr_metric", "asr_wer", "asr_model")

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self.model = load_whisper(config)
        self.multilingual = bool(self.model.model.is_multilingual)

    def process_row(self, row: Row) -> None:
        language = self._language(row)
        result = transcribe(self.model, audio_from_row(row), language, self.config.beam_size)
        row.update(asr_text=result.text, asr_language=result.language, asr_model=self.config.model)
        reference = row["speech_content"]
        if not reference or not normalise(reference):
            return
        metric, rate = error_rate(reference, result.text, row["lang"] or result.language)
        limit = self.config.max_cer if metric == "cer" else self.config.max_wer
        row.update(asr_metric=metric, asr_wer=rate)
        if rate > limit:
            raise MediaError(f"{metric}_above_threshold", f"{metric} {rate:.2f} > {limit}")

    def _language(self, row: Row) -> str | None:
        language = self.config.language or row["lang"]
        if not self.multilingual:
            if language not in (None, "en"):
                raise MediaError("asr_language_unsupported", f"English-only model, clip language {language!r}")
            return None
        return language
