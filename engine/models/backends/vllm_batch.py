"""Qwen2.5-VL descriptions through `ray.data.llm`'s vLLM processor: the throughput path on GPU nodes.

The processor is a chain of Ray Data stages (multimodal preparation, chat template, tokenize, vLLM engine,
detokenize) that keeps the GPUs saturated with continuous batching; this module only maps clip rows to its
request columns and its answers back to clip rows. The request is the describe stage's own (same prompt,
same frames as image parts), so HTTP, local and vLLM descriptions differ only in the model that answers.

A verdict stage put on this path builds its rows with `chat_request_row`: the request's JSON Schema goes into
`sampling_params.structured_outputs` (ray.data.llm turns it into vLLM's StructuredOutputsParams, decoded by the
engine's structured-output back end, xgrammar unless `structured_outputs_backend` says otherwise), as a JSON
string so that every row's column has one Arrow type. Not run here: vLLM is not installed on CPU machines.

Rows rejected upstream still pass through the processor (a Ray Data stream cannot bypass an operator
without running the upstream twice): they get a one-token text-only request, a negligible cost next to a
clip's 40 frames, and keep their rejection.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.core.config_base import ConfigSection
from engine.core.failures import RETRYABLE
from engine.core.schema import WORK_SCHEMA, is_alive, reject
from engine.models.backends.base import ChatRequest
from engine.stages.base import Row

ERROR_COLUMN = "__inference_error__"
_SKIP_PROMPT = "ok"  # the placeholder request of a row that is already rejected


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


def processor_config(config: VllmBatchConfig) -> Any:
    """The `vLLMEngineProcessorConfig`. Errors stay per row (`should_continue_on_error`): one clip that vLLM
    cannot take (too many frames for the context, a corrupt image) becomes a rejection, not a failed job."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = dict(config.engine_kwargs)
    if config.structured_outputs_backend != "auto":
        engine_kwargs["structured_outputs_config"] = {"backend": config.structured_outputs_backend}
    return vLLMEngineProcessorConfig(
        model_source=config.model_source,
        engine_kwargs=engine_kwargs,
        concurrency=config.concurrency,
        batch_size=config.batch_size,
        accelerator_type=config.accelerator_type,
        max_concurrent_batches=config.max_concurrent_batches,
        prepare_multimodal_stage=True,  # turns the image_url data URLs into images for vLLM
        should_continue_on_error=True,
    )


def describe_request(row: Row, max_tokens: int, temperature: float) -> dict[str, Any]:
    """The processor's input columns for one clip row: chat messages and vLLM sampling parameters."""
    from engine.stages.describe import DescribeStage

    if not (is_alive(row) and row.get("frames_jpeg")):
        return {"messages": [{"role": "user", "content": _SKIP_PROMPT}],
                "sampling_params": {"max_tokens": 1, "temperature": 0.0}}
    request = DescribeStage.build_request(row, max_tokens)
    return {"messages": request.messages, "sampling_params": {"max_tokens": max_tokens, "temperature": temperature}}


def chat_request_row(request: ChatRequest) -> dict[str, Any]:
    """The processor's input columns for one ChatRequest; its response_schema becomes vLLM structured outputs."""
    sampling: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature}
    if request.response_schema is not None:
        sampling["structured_outputs"] = {"json": request.response_schema.text}
    return {"messages": request.messages, "sampling_params": sampling}


def describe_result(row: Row, model_id: str) -> Row:
    """A processor output row (answer or per-row error) back to a clip row with the WORK_SCHEMA columns."""
    out = {name: row.get(name) for name in WORK_SCHEMA.names}
    if not (is_alive(out) and out.get("frames_jpeg")):
        return out
    error = row.get(ERROR_COLUMN) or ""
    if error:
        # vLLM's per-row errors are engine faults (a dead engine, OOM) more often than verdicts on the clip: retried
        # by the next run, given up after the configured attempts.
        return reject(out, "describe", "model_error", f"{model_id}: {error}", RETRYABLE)
    from engine.stages.describe import DescribeStage

    text = (row.get("generated_text") or "").strip()
    if not text:
        return reject(out, "describe", DescribeStage.unparseable_reason, "empty description")
    out["description"] = text
    DescribeStage.record_provenance(out, model_id)
    return out
