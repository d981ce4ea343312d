"""DeepSpeed configs: the shipped ZeRO-2/3 templates with their "auto" fields filled from the recipe config, and
`distributed.zero_stage: auto` resolved from the model's parameter count."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, TypeVar

from train.core.config import SftConfig

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parent / "deepspeed"
Config = TypeVar("Config")  # SftConfig or DpoConfig: both have a `distributed` section


def load_template(stage: int) -> dict[str, Any]:
    return json.loads((TEMPLATES / f"zero{stage}.json").read_text())


def deepspeed_config(config: SftConfig, bf16: bool) -> dict[str, Any]:
    """Fills every "auto" field; raises if a template gains one this function does not know."""
    if config.distributed.zero_stage == "auto":
        raise ValueError("distributed.zero_stage: 'auto' must be resolved first (resolve_zero_stage)")
    ds = load_template(config.distributed.zero_stage)
    values = {
        "train_micro_batch_size_per_gpu": config.optim.micro_batch,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": config.optim.grad_clip,
    }
    for key, value in values.items():
        ds[key] = value
    ds["bf16"]["enabled"] = bf16
    leftover = [k for k, v in _walk(ds) if v == "auto"]
    if leftover:
        raise ValueError(f"DeepSpeed template has unfilled 'auto' fields: {leftover}")
    return ds


def parameter_count(model_path: str) -> int:
    """Parameters of the thinker at `model_path`, counted on the meta device from its config (no weights read)."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    values, _ = Thinker.config_class.get_config_dict(model_path)
    # A thinker's own folder, or a whole Omni model's (Qwen/Qwen2.5-Omni-7B), whose config nests the thinker's.
    model_config = Thinker.config_class.from_dict(values.get("thinker_config", values))
    with torch.device("meta"):
        model = Thinker._from_config(model_config)
    return sum(p.numel() for p in model.parameters())


def resolve_zero_stage(config: Config, model_path: str) -> Config:
    """The config with `distributed.zero_stage: auto` made 3 for a model of at least `distributed.zero3_min_params`
    parameters, else 2 (re-validated, so the checks that depend on the stage run); any other config as it is."""
    dist = config.distributed  # type: ignore[attr-defined]
    if dist.zero_stage != "auto":
        return config
    params = parameter_count(model_path)
    stage = 3 if params >= dist.zero3_min_params else 2
    log.info("distributed.zero_stage auto: ZeRO-%d for %.3g parameters (ZeRO-3 from %.3g)", stage, params,
             dist.zero3_min_params)
    data = config.model_dump()  # type: ignore[attr-defined]
    data["distributed"]["zero_stage"] = stage
    return type(config).model_validate(data)  # type: ignore[attr-defined]


def _walk(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
