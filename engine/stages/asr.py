"""ASR with faster-whisper and the WER (CER for Chinese) check against the annotated speech content."""

from __future__ import annotations

import logging
from collections import defaultdict

from engine.core.config import AsrConfig
from engine.core.media import MediaError
from engine.core.schema import is_alive
from engine.core.text import error_rate, normalise
from engine.models.backends.whisper import Transcript, detect_language, load_whisper, transcribe_batch
from engine.ops import monitoring
from engine.stages.base import Row, RowStage, StageInputError
from engine.stages.decode import audio_from_row

log = logging.getLogger(__name__)


class AsrWerFilterStage(RowStage):
    """Transcribes the decoded audio and rejects clips whose annotated transcript disagrees with it.

    The batch's clips are transcribed together (`asr.batch_size` at a time, one language per decoding batch; short
    clips packed into shared 30 s windows, `asr.pack_seconds`), then each row is checked on its own. A decoding
    batch that raises is split in halves down to single clips (each in a window of its own),
    so a failure costs only its own clip (recorded as retryable by RowStage). Clips without annotated speech
    keep their transcript with no error rate (nothing to check against).
    """

    name = "asr"
    requires = ("audio_pcm", "speech_content", "lang")
    produces = ("asr_text", "asr_language", "asr_metric", "asr_wer", "asr_model")

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self.model = load_whisper(config)
        self.multilingual = bool(self.model.model.is_multilingual)
        self._transcripts: dict[int, Transcript | Exception] = {}

    def __call__(self, rows: list[Row]) -> list[Row]:
        """RowStage's loop with the batch's transcription first (inside the same stage timer)."""
        if rows and (missing := [col for col in self.requires if col not in rows[0]]):
            raise StageInputError(f"{self.name} stage needs columns {missing}")
        with monitoring.stage_timer(self.name, len(rows)):
            live = [row for row in rows if is_alive(row)]
            self._transcripts = self._transcribe(live)
            try:
                for row in live:
                    self._guarded(row)
            finally:
                self._transcripts = {}
        return rows

    def process_row(self, row: Row) -> None:
        result = self._transcripts[id(row)]
        if isinstance(result, Exception):
            raise result
        row.update(asr_text=result.text, asr_language=result.language, asr_model=self.config.model)
        reference = row["speech_content"]
        lang = row["lang"] or result.language
        if not reference or not normalise(reference, lang):
            return
        metric, rate = error_rate(reference, result.text, lang)
        limit = self.config.max_cer if metric == "cer" else self.config.max_wer
        row.update(asr_metric=metric, asr_wer=rate)
        if rate > limit:
            raise MediaError(f"{metric}_above_threshold", f"{metric} {rate:.2f} > {limit}")

    # ---- batched transcription ----------------------------------------------------------------------------------
    def _transcribe(self, rows: list[Row]) -> dict[int, Transcript | Exception]:
        """id(row) -> its transcript, or the exception that stands for it (raised again in process_row)."""
        results: dict[int, Transcript | Exception] = {}
        by_language: dict[str | None, list[Row]] = defaultdict(list)
        for row in rows:
            try:
                by_language[self._language(row)].append(row)
            except Exception as err:  # noqa: BLE001 - recorded on its own row by RowStage
                results[id(row)] = err
        for language, group in by_language.items():
            for start in range(0, len(group), self.config.batch_size):
                chunk = group[start:start + self.config.batch_size]
                results.update(zip(map(id, chunk), self._decode(chunk, language), strict=True))
        return results

    def _decode(self, rows: list[Row], language: str | None) -> list[Transcript | Exception]:
        try:
            return list(transcribe_batch(self.model, [audio_from_row(r) for r in rows], language,
                                         self.config.beam_size, self.config.batch_size,
                                         self.config.pack_seconds, self.config.pack_gap_seconds))
        except Exception as err:  # noqa: BLE001 - isolated per clip below, logged
            if len(rows) == 1:
                return [err]
            log.warning("asr: a batch of %d clips failed (%s: %s); retrying it in halves", len(rows),
                        type(err).__name__, err)
            half = len(rows) // 2
            return self._decode(rows[:half], language) + self._decode(rows[half:], language)

    def _language(self, row: Row) -> str | None:
        """The decoding language: the configured one, else the clip's, else Whisper's detection."""
        language = self.config.language or row["lang"]
        if not self.multilingual:
            if language not in (None, "en"):
                raise MediaError("asr_language_unsupported", f"English-only model, clip language {language!r}")
            return None
        return language or detect_language(self.model, audio_from_row(row))
