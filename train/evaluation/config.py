"""The evaluation run's config (`EvalConfig`: the model under test, the benchmark, media, generation, the judge)
and the table layouts of its answers and per-item results.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from engine.core import storage
from engine.core.config import BackendConfig, ModelStageConfig, PoolConfig
from engine.core.config_base import ConfigSection
from train.core.config import DataConfig
from train.evaluation.benchmarks import BENCHMARKS, ITEM_SCHEMA
from train.evaluation.judging import JUDGMENT_SCHEMA
from train.inference.generation import GenerationConfig

ANSWER_SCHEMA = pa.schema([
    *ITEM_SCHEMA,
    pa.field("prompt_version", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("answer_status", pa.string(), nullable=False),  # ok | failed
    pa.field("answer_fail_reason", pa.string()),
    pa.field("answer_fail_detail", pa.string()),
    pa.field("answer_model", pa.string()),
    pa.field("generation_hash", pa.string()),
    pa.field("answer_seconds", pa.float64()),
    pa.field("answered_at", pa.timestamp("ms", tz="UTC")),
])
ITEMS_SCHEMA = pa.schema([*ANSWER_SCHEMA, pa.field("prediction", pa.string()), pa.field("parse_error", pa.string()),
                          *[f.with_nullable(True) for f in JUDGMENT_SCHEMA if f.name != "item_id"]])


class AnswerModelConfig(ConfigSection):
    """The model under test: a thinker checkpoint (folder, hub id or `tiny:DIR`) or a chat backend (API)."""

    kind: Literal["checkpoint", "api"] = "checkpoint"
    path: str = ""
    name: str | None = None  # results/<benchmark>/<name>/; default from the path or API model id
    backend: BackendConfig | None = None  # kind api: an OpenAI-compatible endpoint (or a local chat backend)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    torch_threads: int | None = Field(None, ge=1)  # per answering actor; 1 on small CPU boxes

    @model_validator(mode="after")
    def _source_given(self) -> AnswerModelConfig:
        if self.kind == "checkpoint" and not self.path:
            raise ValueError("kind checkpoint needs path (a folder, hub id or tiny:DIR; --model)")
        if self.kind == "api" and (self.backend is None or self.backend.kind == "vllm"):
            raise ValueError("kind api needs backend with kind http (or local)")
        return self

    @property
    def model_id(self) -> str:
        if self.kind == "checkpoint":
            return self.path
        return self.backend.http.model if self.backend.kind == "http" else self.backend.local.model


class EvalConfig(ConfigSection):
    """Everything `jobs/evaluate.py` needs."""

    benchmark: str = ""
    data: str = ""  # the manifest: .jsonl, .parquet or a folder of parts, local or s3://
    output_root: str = "results"
    output: str | None = None  # the result folder; default output_root/<benchmark>/<model name>
    limit: int | None = Field(None, ge=1)
    block_rows: int = Field(16, ge=1)
    flush_rows: int = Field(64, ge=1)  # answers/judgments saved at least this often (finer resume)
    # Runs that may fail an item at the API (engine.core.failures: retryable) before the item is left failed (gave up).
    max_attempts: int = Field(3, ge=1)
    ray_address: str | None = None
    model: AnswerModelConfig = AnswerModelConfig(path="Qwen/Qwen2.5-Omni-7B")
    media: DataConfig = DataConfig()
    generation: GenerationConfig = GenerationConfig()
    answer_pool: PoolConfig = PoolConfig()
    judge: ModelStageConfig = ModelStageConfig(max_tokens=256)

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        problems = []
        if self.benchmark not in BENCHMARKS:
            problems.append(f"benchmark: {self.benchmark!r} is not one of {sorted(BENCHMARKS)}")
        elif BENCHMARKS[self.benchmark].judge and not self.judge.enabled:
            problems.append(f"judge.enabled: benchmark {self.benchmark} is scored by a judge; configure one")
        if not self.data:
            problems.append("data: missing (the benchmark manifest; --data)")
        if self.generation.num_samples != 1:
            problems.append(f"generation.num_samples: evaluation takes one answer per item, got "
                            f"{self.generation.num_samples}")
        if self.judge.backend is not None and self.judge.backend.kind == "vllm":
            problems.append("judge.backend.kind: use http (a vLLM server) or local for judges")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def model_name(self) -> str:
        if self.model.name:
            return self.model.name
        base = self.model.model_id.rstrip("/").split(":")[-1].rstrip("/")
        name = base.rsplit("/", 1)[-1] if self.model.kind == "checkpoint" else base.replace("/", "_")
        return name + ("-ar" if self.generation.attention_reallocation else "")

    @property
    def folder(self) -> str:
        return storage.absolute(self.output or storage.join(self.output_root, self.benchmark, self.model_name))


def generation_hash(config: EvalConfig) -> str:
    """Names what makes an answer: the model, the decoding settings and the media the model sees."""
    media = config.media.model_dump(include={"fps", "max_frames", "max_pixels", "audio_in_video"})
    identity = {"model": config.model.model_id, "generation": config.generation.model_dump(), "media": media}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def judge_model_id(config: EvalConfig) -> str | None:
    backend = config.judge.backend
    if not config.judge.enabled or backend is None:
        return None
    return backend.http.model if backend.kind == "http" else backend.local.model


def with_cache(backend: BackendConfig, cache_dir: str) -> BackendConfig:
    """An HTTP backend without a cache_dir caches in the result folder: a rerun never pays twice."""
    if backend.kind != "http" or backend.http.cache_dir is not None:
        return backend
    return backend.model_copy(update={"http": backend.http.model_copy(update={"cache_dir": cache_dir})})
