"""The local transformers backend's config (engine.models.backends.local runs it): kept apart from the backend, so that
engine.core.config, imported by every media task, driver and actor, reads this small module and not the backend's
generation code."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from engine.core.config_base import ConfigSection

Kind = Literal["qwen2_5_vl", "qwen2_5_omni", "causal_lm"]
# `tiny-...:DIR` builds a tiny model of that kind into DIR first (CPU demo and tests).
_TINY_KINDS: dict[str, Kind] = {"tiny-vl:": "qwen2_5_vl", "tiny-omni:": "qwen2_5_omni", "tiny-lm:": "causal_lm"}
MIN_PIXELS = 4 * 28 * 28  # one merged 2x2 patch block of 28x28 pixels: the least a frame can be


class LocalBackendConfig(ConfigSection):
    """A local transformers model and how to run it."""

    model: str  # a folder or hub id, or tiny-vl:DIR / tiny-omni:DIR / tiny-lm:DIR
    kind: Kind
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    batch_size: int = Field(4, ge=1)
    max_pixels: int = Field(128 * 28 * 28, ge=MIN_PIXELS)  # per frame, before the 2x2 patch merge
    # The rate the engine sampled frames at (MediaConfig.fps): sets the video tokens' temporal RoPE positions.
    frames_fps: float = Field(2.0, gt=0)
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    constrained_decoding: bool = True  # generate verdicts within their JSON Schema (engine.models.constrained)
    # Caps every free string of a schema (characters): a random tiny model fills strings to their maxLength.
    max_string_chars: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _tiny_kind_matches(self) -> LocalBackendConfig:
        for prefix, kind in _TINY_KINDS.items():
            if self.model.startswith(prefix) and kind != self.kind:
                raise ValueError(f"model {self.model!r} builds a {kind} model but kind is {self.kind!r}")
        return self


def resolve_model_path(model: str) -> str:
    """A `tiny-...:DIR` spec → the built folder (cached); anything else is returned as is."""
    from engine.devkit.tiny_models import build_tiny_omni
    from engine.devkit.tiny_vl import build_tiny_causal_lm, build_tiny_qwen2_5_vl

    builders = {"tiny-vl:": build_tiny_qwen2_5_vl, "tiny-omni:": build_tiny_omni, "tiny-lm:": build_tiny_causal_lm}
    for prefix, build in builders.items():
        if model.startswith(prefix):
            return str(build(Path(model[len(prefix):]).expanduser().resolve()))
    return model
