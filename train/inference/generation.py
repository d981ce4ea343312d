"""Answers from a thinker checkpoint for clips, with exactly the prompt the SED recipe trained on.

Preference sampling (K responses at T=0.8) and evaluation both generate through `ThinkerGenerator`, so a
response is always conditioned on the same system prompt, media encoding and instruction as in training.
A checkpoint folder holding MoSE experts (`mose.safetensors`, see train.mosear) gets them attached; attention
reallocation (MoSEAR's AR) is a flag of the generation config.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from engine.core.config_base import ConfigSection
from train.core.config import DataConfig
from train.data.sed_data import SedEncoder, load_media

log = logging.getLogger(__name__)


class GenerationConfig(ConfigSection):
    num_samples: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)  # 0: greedy (evaluation); the CA-DPO sampler uses 0.8
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    seed: int = 0
    # MoSEAR attention reallocation at every decoding step (needs the eager attention path).
    attention_reallocation: bool = False
    reallocation_tau: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> GenerationConfig:
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"num_samples={self.num_samples} needs temperature > 0 (greedy gives one answer)")
        return self


def clip_seed(seed: int, clip_id: str) -> int:
    """A per-clip seed, so a resumed or repeated run draws the same samples for the same clip."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{clip_id}".encode()).digest()[:4], "little")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ThinkerGenerator:
    """Loads a Qwen2.5-Omni thinker and its processor once (per actor); generates for one clip at a time,
    its K samples in one batched `generate` call."""

    def __init__(self, model_path: str, data: DataConfig, device: str = "auto", dtype: str = "auto",
                 attn_implementation: str = "sdpa") -> None:
        from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

        self.device = resolve_device(device)
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" or (dtype == "auto" and self.device.type == "cuda") \
            else torch.float32
        self.model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            model_path, dtype=torch_dtype, attn_implementation=attn_implementation).to(self.device).eval()
        if Path(model_path, "mose.safetensors").exists():
            from train.mosear import load_mose

            load_mose(self.model, model_path)
            log.info("MoSE experts attached from %s", model_path)
        self.encoder = SedEncoder(AutoProcessor.from_pretrained(model_path), data)
        self.data = data
        self.model_path = model_path

    @property
    def tokenizer(self) -> Any:
        return self.encoder.processor.tokenizer

    def generate(self, record: dict[str, Any], config: GenerationConfig) -> list[str]:
        """`config.num_samples` answers for one SED record (its media decoded from `source_uri`). Raises
        engine.core.media.MediaError for media that cannot be decoded."""
        frames, audio = load_media(record["source_uri"], self.data)
        return self.generate_from_media(record, frames, audio, config)

    @torch.inference_mode()
    def generate_from_media(self, record: dict[str, Any], frames: Any, audio: Any,
                            config: GenerationConfig) -> list[str]:
        inputs = self.encoder.encode_prompt(record, frames, audio, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        prompt_len = inputs["input_ids"].shape[1]
        torch.manual_seed(clip_seed(config.seed, record.get("clip_id") or record["source_uri"]))
        sampling: dict[str, Any] = {"do_sample": False}
        if config.temperature > 0:
            sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
        with self._reallocation(config):
            out = self.model.generate(**inputs, max_new_tokens=config.max_new_tokens,
                                      num_return_sequences=config.num_samples,
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        return self.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)

    def _reallocation(self, config: GenerationConfig) -> Any:
        from contextlib import nullcontext

        if not config.attention_reallocation:
            return nullcontext()
        from train.mosear import attention_reallocation

        return attention_reallocation(self.model, tau=config.reallocation_tau)
