"""Independent video description (Qwen2.5-VL in the paper) from the sampled frames only."""

from __future__ import annotations

from engine.models.backends.base import ChatBackend, ChatRequest
from engine.models.backends.media_parts import frame_parts, media_key
from engine.models.prompts import DESCRIBE
from engine.models.verdicts import VerdictError
from engine.stages.base import Row
from engine.stages.model_stage import BatchedModelStage


class DescribeStage(BatchedModelStage):
    name = "describe"
    prompt = DESCRIBE
    unparseable_reason = "empty_description"
    repair = False  # free text: nothing to repair, an empty answer is recorded
    requires = ("frames_jpeg",)
    produces = ("description", "provenance")

    def __init__(self, backend: ChatBackend, max_tokens: int = 256) -> None:
        super().__init__(backend)
        self.max_tokens = max_tokens

    def request(self, row: Row) -> ChatRequest:
        return self.build_request(row, self.max_tokens)

    @classmethod
    def build_request(cls, row: Row, max_tokens: int) -> ChatRequest:
        """Also used by the ray.data.llm vLLM path, so every backend is asked exactly the same."""
        content = [*frame_parts(row["frames_jpeg"]), {"type": "text", "text": DESCRIBE.text}]
        return ChatRequest([{"role": "user", "content": content}], max_tokens=max_tokens,
                           media_key=media_key(row["frames_jpeg"], b""), tag=cls.name)

    def accept(self, row: Row, text: str) -> None:
        if not text.strip():
            raise VerdictError("empty description")
        row["description"] = text.strip()
