"""Six-dimension annotation by an audio-visual model, for clips that came without one."""

from __future__ import annotations

from engine.models.annotation import flatten_annotation
from engine.models.backends.base import ChatBackend, ChatRequest
from engine.models.backends.media_parts import audio_part, frame_parts, media_key
from engine.models.prompts import ANNOTATE, annotate_prompt
from engine.models.verdicts import ANNOTATION_SCHEMA, parse_json_object
from engine.stages.base import Row
from engine.stages.model_stage import BatchedModelStage


class AnnotateStage(BatchedModelStage):
    """Frames + audio in, the official SABER JSON out (validated; one repair re-ask, then a rejection)."""

    name = "annotate"
    prompt = ANNOTATE["en"]
    unparseable_reason = "annotation_invalid"
    requires = ("frames_jpeg", "audio_pcm", "annotation_source", "lang")
    produces = ("video_desc", "speech_content", "acoustic_feat", "facial_exp_desc", "body_lang_desc",
                "sentiment_analysis", "annotation_source", "provenance")

    def __init__(self, backend: ChatBackend, max_tokens: int = 1024) -> None:
        super().__init__(backend)
        self.max_tokens = max_tokens

    def wants(self, row: Row) -> bool:
        return row["annotation_source"] is None  # given annotations are never overwritten

    def request(self, row: Row) -> ChatRequest:
        content = [*frame_parts(row["frames_jpeg"]), audio_part(row["audio_pcm"]),
                   {"type": "text", "text": annotate_prompt(row["lang"]).text}]
        return ChatRequest([{"role": "user", "content": content}], max_tokens=self.max_tokens, json_mode=True,
                           response_schema=ANNOTATION_SCHEMA, media_key=media_key(row["frames_jpeg"], row["audio_pcm"]),
                           tag=self.name)

    def accept(self, row: Row, text: str) -> None:
        row.update(flatten_annotation(parse_json_object(text)), annotation_source=f"model:{self.backend.model_id}")
