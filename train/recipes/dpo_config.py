"""Typed configuration of the preference-optimisation recipe (CA-DPO and AVEm-DPO), loaded like the SFT config.

The model, LoRA, distributed and optimizer sections are the SFT recipe's types (so `train.recipes.sft`'s engine,
checkpoint and final-save functions take either config); what differs is the data (a preference table), the
reference model and the loss, and the optimizer defaults, which are the CA-DPO paper's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.core.config_base import ConfigSection
from train.core.config import DataConfig, DistributedConfig, LoraConfig, ModelConfig, MoseConfig, OptimConfig
from train.core.losses import AvemConfig

_AVEM = AvemConfig()  # the AVEm-DPO paper's values live on the loss's own type; the fields below default to them


class PolicyModelConfig(ModelConfig):
    # The policy starts from the SFT run's `final/` folder (LoRA already merged); no hub default makes sense here.
    path: str = ""


class PreferenceDataConfig(DataConfig):
    # The preference table (Parquet folder or a .parquet / .jsonl file) written by the preference-building job.
    # The media fields (fps, max_frames, max_pixels, audio_in_video, max_length) are the SFT ones: DPO must see
    # each clip exactly as SFT did. The inherited `sed` field is not used and must stay empty.
    preferences: str = ""


class PreferenceOptimConfig(OptimConfig):
    # CA-DPO (SABER-LLM Sec. V): 1 epoch, batch 64, lr 1e-5.
    lr: float = Field(1e-5, gt=0)
    epochs: int = Field(1, ge=1)
    global_batch: int = Field(64, ge=1)


class ReferenceConfig(ConfigSection):
    """Where π_ref's log-probs come from. π_ref is the frozen SFT model (DESIGN.md), i.e. `model.path` by default.

    model:        a second, frozen copy on every worker (no grad, eval). Under ZeRO-3 it is partitioned like the
                  policy (`shard_zero3`), otherwise each worker holds all of it.
    precomputed:  one Ray Data pass before training (an actor pool holding the reference) adds the log-prob
                  columns; training workers hold no reference. The small result is kept as RUN/reference_logps.parquet
                  so a restarted run does not pay for it twice.
    adapters_off: the LoRA policy with its adapters disabled, i.e. exactly `model.path`; no extra memory.
    """

    mode: Literal["model", "precomputed", "adapters_off"] = "model"
    path: str | None = None  # None: model.path (the SFT weights the policy starts from)
    shard_zero3: bool = True  # mode=model with ZeRO-3: wrap the reference in its own optimizer-less ZeRO-3 engine
    precompute_batch: int = Field(2, ge=1)  # pairs per reference forward in the precompute pass
    precompute_concurrency: int = Field(1, ge=1)  # reference actors (each takes a GPU when distributed.use_gpu)


class PreferenceLossConfig(ConfigSection):
    kind: Literal["dpo", "avem"] = "dpo"  # dpo: sigmoid DPO, SABER-LLM Eq. 3; avem: AVEm-DPO, Eq. 9 with Eq. 10
    beta: float = Field(_AVEM.beta, gt=0)
    # AVEm-DPO only: weights of the two rejections (must sum to 1), of the input-preference term and of TPD.
    beta_vr: float = Field(_AVEM.beta_vr, ge=0)
    beta_er: float = Field(_AVEM.beta_er, ge=0)
    lambda_av: float = Field(_AVEM.lambda_av, ge=0)
    gamma_tpd: float = Field(_AVEM.gamma_tpd, ge=0)

    def avem(self) -> AvemConfig:
        return AvemConfig(beta=self.beta, beta_vr=self.beta_vr, beta_er=self.beta_er, lambda_av=self.lambda_av,
                          gamma_tpd=self.gamma_tpd)


class DpoConfig(ConfigSection):
    name: str = "ca-dpo"
    storage_path: str = ""  # local folder or s3:// for checkpoints, metrics and the final model
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)  # optimizer steps
    report_every: int = Field(1, ge=1)  # ray.train.report every N steps (see SftConfig); metrics.jsonl gets all
    keep_checkpoints: int = Field(2, ge=1)
    ray_address: str | None = None
    # Response log-probs through TRL's fused LM head (chunked, float32) instead of full [rows, T, vocab] logits:
    # the same numbers without the step's largest tensor. ZeRO-2 only (see train.data.reference.add_fused_logps).
    fused_logps: bool = False
    model: PolicyModelConfig = PolicyModelConfig()
    lora: LoraConfig = LoraConfig()
    reference: ReferenceConfig = ReferenceConfig()
    loss: PreferenceLossConfig = PreferenceLossConfig()
    data: PreferenceDataConfig = PreferenceDataConfig()
    optim: PreferenceOptimConfig = PreferenceOptimConfig()
    distributed: DistributedConfig = DistributedConfig()
    # Read by the SFT recipe's engine and final-save functions, which this recipe reuses; preference optimisation
    # of MoSE experts is not implemented (the reference would need them too), so it must stay disabled.
    mose: MoseConfig = MoseConfig()

    @model_validator(mode="after")
    def _consistent(self) -> DpoConfig:
        problems = [f"{name}: missing" for name, value in (
            ("storage_path", self.storage_path), ("data.preferences", self.data.preferences),
            ("model.path", self.model.path)) if not value]
        if self.data.sed:
            problems.append(f"data.sed ({self.data.sed!r}): not used by DPO; the pairs come from data.preferences")
        per_step = self.optim.micro_batch * self.distributed.num_workers
        if self.optim.global_batch % per_step:
            problems.append(f"optim.global_batch ({self.optim.global_batch}) must be a multiple of micro_batch x "
                            f"num_workers ({per_step})")
        if self.distributed.use_gpu == (self.distributed.backend == "gloo"):
            problems.append("distributed.backend: use nccl with GPUs and gloo on CPU")
        if self.fused_logps and self.distributed.zero_stage == 3:
            problems.append("fused_logps: needs distributed.zero_stage=2 (TRL's fused head cannot gather a ZeRO-3 "
                            "lm_head outside transformers' DeepSpeed integration)")
        if self.mose.enabled:
            problems.append("mose.enabled: preference optimisation of MoSE experts is not supported")
        problems += self._reference_problems()
        if self.loss.kind == "avem":
            try:
                self.loss.avem()
            except ValueError as err:
                problems.append(f"loss: {err}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _reference_problems(self) -> list[str]:
        if self.reference.mode != "adapters_off":
            return []
        problems = []
        if not self.lora.enabled:
            problems.append("reference.mode=adapters_off needs lora.enabled=true (the reference is the policy "
                            "without its adapters)")
        if self.reference.path not in (None, self.model.path):
            problems.append(f"reference.path ({self.reference.path!r}): with adapters_off the reference is "
                            f"model.path ({self.model.path!r})")
        return problems

    @property
    def grad_accum(self) -> int:
        return self.optim.global_batch // (self.optim.micro_batch * self.distributed.num_workers)

    @property
    def reference_path(self) -> str:
        return self.reference.path or self.model.path
