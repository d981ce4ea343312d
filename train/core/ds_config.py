"""DeepSpeed configs: the shipped ZeRO-2/3 templates with their "auto" fields filled from the recipe config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.core.config import SftConfig

TEMPLATES = Path(__file__).resolve().parent / "deepspeed"


def load_template(stage: int) -> dict[str, Any]:
    return json.loads((TEMPLATES / f"zero{stage}.json").read_text())


def deepspeed_config(config: SftConfig, bf16: bool) -> dict[str, Any]:
    """Fills every "auto" field; raises if a template gains one this function does not know."""
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


def _walk(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
