"""Typed configuration of the CA-DPO preference build (loaded like every other config: YAML + key=value)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.core.config import ModelStageConfig, PoolConfig
from engine.core.config_base import ConfigSection
from train.core.config import DataConfig
from train.inference.generation import GenerationConfig
from train.preferences.rank import RankingConfig
from train.preferences.vllm_sampling import VllmSamplingConfig


class SelectionConfig(ConfigSection):
    """Which SED training records become queries: balanced between the relation judge's two labels."""

    # Queries per relation (consistent, inconsistent); None takes every clip of the smaller relation.
    per_relation: int | None = Field(1000, ge=1)
    # True: both relations get the same count, min(per_relation, available of each). False: each relation
    # gets up to per_relation on its own.
    balanced: bool = True
    seed: int = 0


class SamplerModelConfig(ConfigSection):
    """How the transformers sampler loads the SFT checkpoint (vLLM has its own settings under `vllm`)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"


class AvemConfig(ConfigSection):
    """AVEm-DPO extras: two rejections written from each chosen response, and a swap clip per query."""

    enabled: bool = False
    writer: ModelStageConfig = ModelStageConfig(max_tokens=2048)
    swap_seed: int = 0
    # auto: from the prompt (visual-only prompt -> video swapped, audio-only -> audio, otherwise both).
    swap_modality: Literal["auto", "video", "audio", "both"] = "auto"


class PreferenceJudgeConfig(ModelStageConfig):
    """The judge's model stage, plus its sampling temperature."""

    max_tokens: int = Field(256, ge=1)
    # 0 (greedy) keeps verdicts reproducible and is what a real judge should use. The demo's random tiny judge
    # samples instead: greedy, it gives every response the same scores, and equal scores make no pair.
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class PreferenceConfig(ConfigSection):
    """Everything `jobs/build_preferences.py` needs."""

    engine_output: str = ""  # the build_saber output folder (sed/, relations/, clips/)
    sft_model: str = ""  # the SFT checkpoint folder (or tiny:DIR for the CPU demo)
    output: str = ""
    round: int = Field(1, ge=0)  # preference round (iterative DPO): part of every pair's identity
    ray_address: str | None = None
    # Queries per Ray Data block and per written part: the resume unit (a killed run redoes at most this many).
    batch_queries: int = Field(8, ge=1)
    # Runs in which a query may be dropped because judge calls failed for a reason of the world (engine.core.failures)
    # before it is recorded as gave_up; until then each rerun samples and judges it again.
    max_attempts: int = Field(3, ge=1)
    selection: SelectionConfig = SelectionConfig()
    data: DataConfig = DataConfig()  # media encoding: must match the SFT run's
    sampling: GenerationConfig = GenerationConfig(num_samples=10, temperature=0.8, max_new_tokens=1024)
    sampler_backend: Literal["transformers", "vllm"] = "transformers"
    sampler: PoolConfig = PoolConfig(batch_size=1)  # the transformers sampler's actor pool
    sampler_model: SamplerModelConfig = SamplerModelConfig()
    vllm: VllmSamplingConfig = VllmSamplingConfig()  # used when sampler_backend is vllm
    judge: PreferenceJudgeConfig = PreferenceJudgeConfig()
    ranking: RankingConfig = RankingConfig()
    avem: AvemConfig = AvemConfig()

    @model_validator(mode="after")
    def _consistent(self) -> PreferenceConfig:
        problems = [f"{name}: missing" for name in ("engine_output", "sft_model", "output") if not getattr(self, name)]
        if not (self.judge.enabled and self.judge.backend):
            problems.append("judge: the preference build needs a judge (judge.enabled=true and judge.backend)")
        if self.sampling.num_samples < self.ranking.min_judged:
            problems.append(f"sampling.num_samples ({self.sampling.num_samples}) must be >= ranking.min_judged "
                            f"({self.ranking.min_judged}): top-2 and bottom-2 need four judged responses")
        if self.sampling.temperature == 0:
            problems.append("sampling.temperature: 0 gives K identical greedy answers; the paper samples at 0.8")
        if self.avem.enabled and not (self.avem.writer.enabled and self.avem.writer.backend):
            problems.append("avem.writer: avem.enabled needs avem.writer.enabled=true and avem.writer.backend")
        for name, stage in (("judge", self.judge), ("avem.writer", self.avem.writer)):
            if stage.backend and stage.backend.kind == "vllm":
                problems.append(f"{name}.backend.kind: 'vllm' is the engine's describe-only batch path; point "
                                f"{name} at a vLLM server with kind 'http' instead")
        if problems:
            raise ValueError("; ".join(problems))
        return self
