"""Typed configuration of the SED supervised fine-tuning recipe (loaded like the engine's configs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from engine.core.config_base import ConfigSection

LM_LINEAR_LAYERS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


class ModelConfig(ConfigSection):
    # A folder or hub id loaded with from_pretrained, or `tiny:DIR` to build a tiny Omni thinker into DIR
    # first (CPU demo and tests; same loading code afterwards).
    path: str = "Qwen/Qwen2.5-Omni-7B"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    freeze_audio_tower: bool = True
    freeze_visual: bool = True
    gradient_checkpointing: bool = False


class LoraConfig(ConfigSection):
    enabled: bool = False
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    # A regex over module names: the language model's linear layers only (encoders stay frozen).
    target_modules: str = LM_LINEAR_LAYERS


class MoseConfig(ConfigSection):
    """MoSE hyper-parameters (paper defaults: N = 2, r = 64, eps = 0.1); a section of a recipe config."""

    enabled: bool = False  # read by the recipes; attach_mose attaches whatever it is given
    num_experts: int = Field(2, ge=1)  # N up-projections B_i per expert, mixed by the per-token router
    rank: int = Field(64, ge=1)  # r, the shared down-projection's output size
    epsilon: float = Field(0.1, ge=0, le=0.5)  # lambda in [1/2 - eps, 1/2 + eps]
    gate_hidden: int = Field(128, ge=1)  # hidden width of the gate MLP f (input 2d, output 1)
    target: Literal["mlp"] = "mlp"  # experts parallel to each decoder layer's FFN (Eq. 4)
    layers: Literal["all"] | list[int] = "all"  # decoder layer indices, checked against the model at attach

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, layers: Literal["all"] | list[int]) -> Literal["all"] | list[int]:
        if layers != "all" and (not layers or len(set(layers)) != len(layers) or min(layers) < 0):
            raise ValueError(f"layers must be 'all' or distinct non-negative layer indices, got {layers}")
        return layers


class DataConfig(ConfigSection):
    sed: str = ""  # sed/ folder (Parquet) written by build_saber, or a .jsonl/.parquet file of records
    fps: float = Field(2.0, gt=0)
    max_frames: int = Field(40, ge=2)
    max_pixels: int = Field(128 * 28 * 28, ge=28 * 28)  # per frame, before Qwen's 2x2 patch merge
    audio_in_video: bool = False  # default: audio as a separate stream, as the official inference
    max_length: int = Field(8192, ge=16)
    preprocess_concurrency: int = Field(1, ge=1)
    # A CPU run of at most this many records encodes in the driver, not in an actor pool that costs more to start
    # than the work (train.data.runtime); 0: always the pool. GPU runs always stream through the pool.
    driver_max_rows: int = Field(64, ge=0)
    limit: int | None = Field(None, ge=1)
    # Each training worker keeps its shard's micro-batches in memory after the first epoch when they take at most this
    # many MB, and replays them instead of restarting the dataset iterator every epoch (train.data.feed); 0: never.
    cache_shard_mb: int = Field(1024, ge=0)
    # Micro-batches each worker reads ahead in a background thread (from before the engine is built, so the first
    # step does not wait for the dataset iterator to start).
    prefetch_batches: int = Field(4, ge=1)


class OptimConfig(ConfigSection):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: int = Field(2, ge=1)
    global_batch: int = Field(128, ge=1)
    micro_batch: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # stop early (tests, smoke runs); the LR schedule still spans epochs


class DistributedConfig(ConfigSection):
    num_workers: int = Field(8, ge=1)
    use_gpu: bool = True
    cpus_per_worker: float = Field(8, gt=0)
    # auto: ZeRO-3 (parameters partitioned as well) for a model of at least `zero3_min_params` parameters, ZeRO-2
    # below. A model well under a billion parameters fits every worker whole, and ZeRO-3's per-layer parameter
    # gathers then only cost time: on the tiny demo thinker (2 CPU workers) the recipe ran at 0.34x a plain PyTorch
    # loop with ZeRO-3 and 0.88x with ZeRO-2. The 7B thinker is over the threshold: ZeRO-3, as the paper's runs.
    zero_stage: Literal[2, 3, "auto"] = 3
    zero3_min_params: int = Field(1_000_000_000, ge=1)
    backend: Literal["nccl", "gloo"] = "nccl"
    max_failures: int = Field(2, ge=0)


class SftConfig(ConfigSection):
    name: str = "sed-sft"
    storage_path: str = ""  # local folder or s3:// for checkpoints, metrics and the final model
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)  # optimizer steps
    # ray.train.report every N steps (checkpoint steps always report). Ray Train V2's report synchronises
    # all workers (measured 1.3-1.9 s on 2 CPU workers): nothing beside a 7B step, 10x a tiny CPU step.
    # metrics.jsonl gets every step regardless.
    report_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    ray_address: str | None = None
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    # MoSEAR's modality-specific experts (train/mosear): only expert and gate parameters train.
    mose: MoseConfig = MoseConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _consistent(self) -> SftConfig:
        problems = []
        if not self.storage_path:
            problems.append("storage_path: missing")
        if not self.data.sed:
            problems.append("data.sed: missing")
        per_step = self.optim.micro_batch * self.distributed.num_workers
        if self.optim.global_batch % per_step:
            problems.append(f"optim.global_batch ({self.optim.global_batch}) must be a multiple of micro_batch x "
                            f"num_workers ({per_step})")
        if self.lora.enabled and self.mose.enabled:
            problems.append("lora.enabled and mose.enabled: choose one adapter (MoSE experts are LoRA mixtures)")
        if self.distributed.use_gpu == (self.distributed.backend == "gloo"):
            problems.append("distributed.backend: use nccl with GPUs and gloo on CPU")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def grad_accum(self) -> int:
        return self.optim.global_batch // (self.optim.micro_batch * self.distributed.num_workers)
