"""Loading the Qwen2.5-Omni thinker for training: dtype, frozen encoders, LoRA, gradient checkpointing."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from train.core.config import LoraConfig, ModelConfig

log = logging.getLogger(__name__)
_TINY = "tiny:"


def resolve_model_path(path: str) -> str:
    """`tiny:DIR` builds (or reuses) a tiny Omni thinker in DIR; anything else is a folder or hub id."""
    if not path.startswith(_TINY):
        return path
    from engine.devkit.tiny_models import build_tiny_omni

    return str(build_tiny_omni(Path(path[len(_TINY):]).expanduser().resolve()))


def torch_dtype(config: ModelConfig) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]


def load_thinker(config: ModelConfig, path: str | None = None) -> torch.nn.Module:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        path or resolve_model_path(config.path), dtype=torch_dtype(config),
        attn_implementation=config.attn_implementation)
    if config.freeze_audio_tower:
        submodule(model, "audio_tower").requires_grad_(False)
    if config.freeze_visual:
        submodule(model, "visual").requires_grad_(False)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def submodule(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The shallowest module called `name` (its path moved between transformers versions)."""
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] == name:
            return module
    raise AttributeError(f"{type(model).__name__} has no submodule {name!r}")


def apply_lora(model: torch.nn.Module, config: LoraConfig) -> torch.nn.Module:
    """LoRA on the language model's linear layers; everything else, encoders included, stays frozen."""
    # Imported here, not at the top: importing peft takes ~9 s on 2 cores (it loads many transformers model
    # classes), and every Ray process that imports this module (train controller, workers, preprocessing and
    # reference actors) would pay it, LoRA or not.
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=config.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, peft_config)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"lora.target_modules {config.target_modules!r} matched no module")
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
