"""K responses per query through `ray.data.llm`'s vLLM processor: the GPU throughput path of the sampler.

Why K requests with n=1 rather than one request with n=K: Ray 2.60's vLLM stage keeps only `outputs[0]` of
each vLLM RequestOutput (ray/llm/_internal/batch/stages/vllm_engine_stage.py, vLLMOutputData), so n=K would
pay for K answers and return one. Each query therefore fans out into K rows, sample k seeded with
clip_seed(seed, clip_id) + k (reproducible per clip, like the transformers sampler), and the K answers are
gathered back per clip by `SampleCollector`, one stateful actor that emits a query as soon as its last answer
arrives: no groupby (a full shuffle, which holds every query until every sample of the round exists), so
judging and committing start with the first complete query. The K requests share their prompt and media byte
for byte, so vLLM's prefix cache
(on by default here) serves the shared prefix once.

Media are decoded once per query with the same decoder and budget as SFT (train.data.sed_data.load_media): the
frames travel as one `video/jpeg` data URL (vLLM's base64 frame-list form), the audio as a separate
`input_audio` WAV part (the official inference layout; `use_audio_in_video` off). A query whose media
cannot be decoded keeps its error and passes the processor as one 1-token text request (a Ray Data stream
cannot bypass an operator without running the upstream twice).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from engine.core.config_base import ConfigSection
from engine.core.media import MediaError, encode_jpeg
from engine.models.backends.media_parts import audio_part
from train.core.config import DataConfig
from train.data.sed_data import load_media
from train.inference.generation import GenerationConfig, clip_seed

ERROR_COLUMN = "__inference_error__"
MEDIA_COLUMNS = ("video_url", "audio_b64")
_SKIP_PROMPT = "ok"


class VllmSamplingConfig(ConfigSection):
    """`ray.data.llm` vLLM processor settings for the sampler; `engine_kwargs` go to vLLM as they are."""

    engine_kwargs: dict[str, Any] = Field(default_factory=lambda: {
        "max_model_len": 32768, "tensor_parallel_size": 1, "limit_mm_per_prompt": {"video": 1, "audio": 1},
        "enable_prefix_caching": True, "mm_processor_kwargs": {"use_audio_in_video": False}})
    concurrency: tuple[int, int] = (1, 1)  # engine replicas (each tensor_parallel_size GPUs)
    batch_size: int = Field(16, ge=1)
    accelerator_type: str | None = None  # e.g. "A100"
    max_concurrent_batches: int = Field(4, ge=1)
    jpeg_quality: int = Field(90, ge=10, le=100)


def processor_config(config: VllmSamplingConfig, model_source: str, data: DataConfig) -> Any:
    """The `vLLMEngineProcessorConfig` for the SFT checkpoint (a folder or s3:// path). The frame rate goes to
    the multimodal processor so the video tokens' time positions match what SFT trained on."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = dict(config.engine_kwargs)
    engine_kwargs["mm_processor_kwargs"] = {**engine_kwargs.get("mm_processor_kwargs", {}), "fps": data.fps}
    return vLLMEngineProcessorConfig(
        model_source=model_source,
        engine_kwargs=engine_kwargs,
        concurrency=config.concurrency,
        batch_size=config.batch_size,
        accelerator_type=config.accelerator_type,
        max_concurrent_batches=config.max_concurrent_batches,
        prepare_multimodal_stage=True,  # data URLs -> frames and waveform for vLLM
        should_continue_on_error=True,
    )


def video_data_url(frames: np.ndarray, quality: int) -> str:
    """vLLM's frame-list video: `data:video/jpeg;base64,<frame 1>,<frame 2>,...` in time order."""
    return "data:video/jpeg;base64," + ",".join(base64.b64encode(encode_jpeg(f, quality)).decode("ascii")
                                                for f in frames)


def attach_media(row: dict[str, Any], data: DataConfig, quality: int) -> dict[str, Any]:
    """Decodes the query's clip once; a MediaError becomes the query's sample_error."""
    try:
        frames, audio = load_media(row["source_uri"], data)
    except MediaError as err:
        return {**row, "sample_error": f"{err.reason}: {err.detail}"[:500], "video_url": None, "audio_b64": None}
    wav = audio_part(np.asarray(audio, dtype="<f4").tobytes())["input_audio"]["data"]
    return {**row, "video_url": video_data_url(frames, quality), "audio_b64": wav}


def expand_samples(row: dict[str, Any], sampling: GenerationConfig) -> list[dict[str, Any]]:
    """K rows per query (sample_index 0..K-1), or one placeholder row (-1) for a query that failed already."""
    if row.get("sample_error"):
        return [{**row, "sample_index": -1}]
    return [{**row, "sample_index": k} for k in range(sampling.num_samples)]


def sample_request(row: dict[str, Any], sampling: GenerationConfig) -> dict[str, Any]:
    """The processor's input columns for one sample row: the SED chat (system, video, audio, instruction, the
    order SFT trained on) and vLLM sampling parameters with this sample's own seed."""
    if row["sample_index"] < 0:
        return {"messages": [{"role": "user", "content": _SKIP_PROMPT}],
                "sampling_params": {"max_tokens": 1, "temperature": 0.0}}
    messages = [
        {"role": "system", "content": row["system"]},
        {"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": row["video_url"]}},
            {"type": "input_audio", "input_audio": {"data": row["audio_b64"], "format": "wav"}},
            {"type": "text", "text": row["prompt"]},
        ]},
    ]
    seed = (clip_seed(sampling.seed, row["clip_id"]) + row["sample_index"]) % 2**31
    return {"messages": messages, "sampling_params": {
        "n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens, "seed": seed}}


def sample_result(row: dict[str, Any], query_columns: list[str]) -> dict[str, Any]:
    """A processor output row (answer or per-row error) -> the query's columns plus this sample's outcome."""
    out = {name: row.get(name) for name in query_columns}
    error = row.get(ERROR_COLUMN) or ""
    out.update(sample_index=int(row["sample_index"]), sample_text=None if error else row.get("generated_text", ""),
               sample_failure=error[:300] or None)
    return out


class SampleCollector:
    """Ray Data callable (one actor, so it sees every sample row): buffers sample rows by clip and returns each
    query row once all its answers are in (K, or the one placeholder row of a query whose media failed).

    Rows arrive in any order and any block. A row seen twice (Ray re-runs a block after losing a worker) counts
    once, by sample index. A query whose rows were lost with a killed collector never completes: it is not in the
    ledger, so the next run samples it again (nothing is written half-done).
    """

    def __init__(self, schema: pa.Schema, sampler: str, num_samples: int) -> None:
        self.schema, self.sampler, self.num_samples = schema, sampler, num_samples
        self.pending: dict[str, dict[int, dict[str, Any]]] = {}

    def __call__(self, table: pa.Table) -> pa.Table:
        done = []
        for row in table.to_pylist():
            samples = self.pending.setdefault(row["clip_id"], {})
            samples[int(row["sample_index"])] = row
            expected = 1 if row["sample_index"] < 0 else self.num_samples
            if len(samples) == expected:
                rows = list(self.pending.pop(row["clip_id"]).values())
                done.append(collect_samples(pa.Table.from_pylist(rows), self.schema, self.sampler,
                                            self.num_samples))
        return pa.concat_tables(done) if done else self.schema.empty_table()


def collect_samples(group: pa.Table, schema: pa.Schema, sampler: str, num_samples: int) -> pa.Table:
    """All sample rows of one query -> its query row: responses in sample order, null where one failed."""
    rows = sorted(group.to_pylist(), key=lambda r: r["sample_index"])
    query = {name: rows[0].get(name) for name in schema.names}
    if not query["sample_error"]:
        answers = {r["sample_index"]: r["sample_text"] for r in rows}
        query["responses"] = [answers.get(k) for k in range(num_samples)]
        failures = [f"sample {r['sample_index']}: {r['sample_failure']}" for r in rows if r["sample_failure"]]
        if len(failures) == len(rows):
            query["sample_error"] = f"all {len(rows)} samples failed; {failures[0]}"[:500]
    query["sampler"] = sampler
    return pa.Table.from_pylist([query], schema=schema)
