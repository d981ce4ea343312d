"""The describe stage on the vLLM path (engine.models.backends.vllm_batch): clip rows to the ray.data.llm processor's
request columns and its answers back to clip rows. The request is the describe stage's own (same prompt, same frames
as image parts), so HTTP, local and vLLM descriptions differ only in the model that answers.

Rows rejected upstream still pass through the processor (a Ray Data stream cannot bypass an operator without running
the upstream twice): they get a one-token text-only request, a negligible cost next to a clip's 40 frames, and keep
their rejection.
"""

from __future__ import annotations

from typing import Any

from engine.core.failures import RETRYABLE
from engine.core.schema import WORK_SCHEMA, is_alive, reject
from engine.models.backends.vllm_batch import ERROR_COLUMN
from engine.stages.base import Row
from engine.stages.describe import DescribeStage

_SKIP_PROMPT = "ok"  # the placeholder request of a row that is already rejected


def describe_request(row: Row, max_tokens: int, temperature: float) -> dict[str, Any]:
    """The processor's input columns for one clip row: chat messages and vLLM sampling parameters."""
    if not (is_alive(row) and row.get("frames_jpeg")):
        return {"messages": [{"role": "user", "content": _SKIP_PROMPT}],
                "sampling_params": {"max_tokens": 1, "temperature": 0.0}}
    request = DescribeStage.build_request(row, max_tokens)
    return {"messages": request.messages, "sampling_params": {"max_tokens": max_tokens, "temperature": temperature}}


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
    text = (row.get("generated_text") or "").strip()
    if not text:
        return reject(out, "describe", DescribeStage.unparseable_reason, "empty description")
    out["description"] = text
    DescribeStage.record_provenance(out, model_id)
    return out
