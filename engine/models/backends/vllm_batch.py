"""The vLLM path through `ray.data.llm`'s processor (the throughput path on GPU nodes): its settings and the request
columns of one model request. The processor itself (a chain of Ray Data stages: multimodal preparation, chat
template, tokenize, vLLM engine, detokenize, with continuous batching) is built by the plan, engine.dataset.pipeline;
the describe stage's rows go in and come back through engine.stages.describe_vllm.

A verdict stage put on this path builds its rows with `chat_request_row`: the request's JSON Schema goes into
`sampling_params.structured_outputs` (ray.data.llm turns it into vLLM's StructuredOutputsParams, decoded by the
engine's structured-output back end, xgrammar unless `structured_outputs_backend` says otherwise), as a JSON
string so that every row's column has one Arrow type. Not run here: vLLM is not installed on CPU machines.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.core.config_base import ConfigSection
from engine.models.backends.base import ChatRequest

ERROR_COLUMN = "__inference_error__"  # where the processor puts a row's error (should_continue_on_error)

class VllmBatchConfig(ConfigSection):
    """`ray.data.llm` vLLM processor settings; `engine_kwargs` go to vLLM's engine as they are."""

    model_source: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    engine_kwargs: dict[str, Any] = Field(default_factory=lambda: {
        "max_model_len": 32768, "tensor_parallel_size": 1, "limit_mm_per_prompt": {"image": 40},
        "enable_prefix_caching": True})
    concurrency: tuple[int, int] = (1, 1)
    batch_size: int = Field(16, ge=1)
    accelerator_type: str | None = None  # e.g. "A100": pins engine actors to that GPU type
    max_concurrent_batches: int = Field(4, ge=1)
    temperature: float = Field(0.0, ge=0)
    # vLLM's structured_outputs_config.backend for schema-constrained requests; "auto" leaves vLLM's choice.
    structured_outputs_backend: Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"] = "auto"


def chat_request_row(request: ChatRequest) -> dict[str, Any]:
    """The processor's input columns for one ChatRequest; its response_schema becomes vLLM structured outputs."""
    sampling: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature}
    if request.response_schema is not None:
        sampling["structured_outputs"] = {"json": request.response_schema.text}
    return {"messages": request.messages, "sampling_params": sampling}
