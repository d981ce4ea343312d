"""Attaching MoSE (training) and AR (inference) to a loaded Qwen2.5-Omni thinker.

    experts = attach_mose(thinker, MoseConfig())       # freezes everything but the experts and gates
    ... train; save_mose(thinker, out_dir) ...          # or mose_state_dict(thinker) into a checkpoint
    load_mose(fresh_thinker, out_dir)                   # attach + load for sampling / evaluation
    with attention_reallocation(thinker, tau=1.0):      # the LM's attention becomes "eager_ar"
        thinker.generate(**inputs)

How token modalities reach the layers. A forward pre-hook on the thinker reads input_ids (the processor's
placeholders: image/video pads are visual, audio pads audio, everything else text) and passes a
`TokenModalities` down as an extra forward keyword. transformers hands it through the LM and every decoder
layer to the attention function, where AR reads it; a pre-hook on each layer's self-attention hands it to the
layer's MoSE experts, which run in a forward hook of the FFN right after. Attention and FFN are called inside
the decoder layer's forward, so a gradient-checkpointed layer replays both hooks with the keywords of its own
forward: masks never leak between forwards (e.g. DPO's chosen and rejected passes before one backward).

Generation. The first forward (empty cache) records the masks of the prompt and every layer's lambda; each
decoding step appends its new tokens (text: non-visual, neither audio nor visual keys) and reuses the
prompt's lambda. Batching and padding: masks are per row; padding is not a placeholder, so it is text for AR
(its attention weight is zero anyway) and is left out of lambda's means through the attention mask.

lambda's means cover the prompt: positions with labels == -100 (train/sed_data masks the prompt so) when labels
are given, or the positions of an explicit `mose_prompt_mask=` keyword (bool [B, T]; for losses computed
outside the model, e.g. DPO), else the whole input, which during generation is the prompt. Training and
generation thus compute the same lambda, and a response token never steers lambda for earlier positions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.core.modeling import submodule
from train.mosear.mose import MoseConfig, MoseExperts
from train.mosear.realloc import EAGER_AR, register_eager_ar
from train.mosear.tokens import TOKENS_KWARG, TokenModalities

PROMPT_MASK_KWARG = "mose_prompt_mask"
IGNORE_INDEX = -100  # the label of positions without loss (transformers' convention)
EXPERTS_NAME = "mose"  # each wrapped FFN's child module: parameters are `...layers.{i}.mlp.mose.*`
_CONTEXT_ATTR = "mosear_context"
MOSE_WEIGHTS, MOSE_CONFIG = "mose.safetensors", "mose_config.json"


@dataclass
class ModalityContext:
    """Per-thinker state behind the pre-hook: placeholder ids, the masks seen so far, lambda, AR settings."""

    visual_ids: tuple[int, ...]
    audio_ids: tuple[int, ...]
    visual: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    gates: dict[int, torch.Tensor] = field(default_factory=dict)
    ar_tau: float | None = None
    attn_before_ar: str | None = None
    mose_config: MoseConfig | None = None

    def before_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Forward pre-hook of the thinker: adds the TokenModalities keyword (and drops the prompt-mask one)."""
        prompt_mask = kwargs.pop(PROMPT_MASK_KWARG, None)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("MoSE/AR find media tokens in input_ids: call the thinker with input_ids, "
                             "not inputs_embeds alone")
        past = _cached_length(kwargs)
        if past == 0:
            kwargs[TOKENS_KWARG] = self._prompt(input_ids, kwargs.get("attention_mask"), kwargs.get("labels"),
                                                prompt_mask)
        else:
            kwargs[TOKENS_KWARG] = self._decoding_step(input_ids, past)
        return args, kwargs

    def _is(self, input_ids: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
        return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))

    def _prompt(self, input_ids: torch.Tensor, attention_mask: Any, labels: torch.Tensor | None,
                prompt_mask: torch.Tensor | None) -> TokenModalities:
        self.visual, self.audio = self._is(input_ids, self.visual_ids), self._is(input_ids, self.audio_ids)
        self.gates = {}
        counted = gate_positions(input_ids, attention_mask, labels, prompt_mask)
        return TokenModalities(self.visual, self.audio, self.visual, counted, self.gates, self.ar_tau,
                               ar_first_row=input_ids.shape[1] - 1)

    def _decoding_step(self, input_ids: torch.Tensor, past: int) -> TokenModalities:
        seen = None if self.visual is None or self.audio is None else list(self.visual.shape)
        if seen is None or seen[0] != input_ids.shape[0] or seen[1] < past:
            raise RuntimeError(f"the cache holds {past} positions of {input_ids.shape[0]} rows but MoSEAR tracked "
                               f"{seen}: run the prompt through the thinker after attaching MoSE/AR")
        new_visual = self._is(input_ids, self.visual_ids)
        # A cache cropped back (assisted decoding) drops the positions past its length.
        self.visual = torch.cat([self.visual[:, :past], new_visual], dim=1)
        self.audio = torch.cat([self.audio[:, :past], self._is(input_ids, self.audio_ids)], dim=1)
        return TokenModalities(self.visual, self.audio, new_visual, None, self.gates, self.ar_tau, ar_first_row=0)


# transformers 5.24 renamed the forward keyword of the KV cache from `past_key_values` to `cache` (the old name
# stays accepted, with a deprecation, until 5.40). Reading only one of them made every decoding step look like a
# fresh prompt: its masks and lambda were recomputed over the one new token.
_CACHE_KWARGS = ("cache", "past_key_values")


def _cached_length(kwargs: dict[str, Any]) -> int:
    """How many positions the forward's KV cache already holds (0 without a cache: a prompt's forward)."""
    for name in _CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is not None:
            return int(cache.get_seq_length())
    return 0


def gate_positions(input_ids: torch.Tensor, attention_mask: Any, labels: torch.Tensor | None,
                   prompt_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T] positions lambda averages over: real (attention_mask) prompt positions (see the module doc)."""
    counted = torch.ones_like(input_ids, dtype=torch.bool)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        counted &= attention_mask[:, -input_ids.shape[1]:].bool()
    if prompt_mask is not None:
        name, prompt = PROMPT_MASK_KWARG, prompt_mask
    elif labels is not None:
        name, prompt = "labels", labels == IGNORE_INDEX
    else:
        return counted
    if prompt.shape != input_ids.shape:
        raise ValueError(f"{name} has shape {list(prompt.shape)}, input_ids {list(input_ids.shape)}")
    return counted & prompt.to(counted.device, torch.bool)


def find_thinker(model: nn.Module) -> nn.Module:
    """The Qwen2.5-Omni thinker inside `model` (itself, or wrapped by PEFT, or the full Omni model's)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    for module in model.modules():
        if isinstance(module, Qwen2_5OmniThinkerForConditionalGeneration):
            return module
    raise TypeError(f"{type(model).__name__} holds no Qwen2_5OmniThinkerForConditionalGeneration")


def modality_context(model: nn.Module) -> ModalityContext:
    """The thinker's context, created with its forward pre-hook on first use. The hook is a bound method of an
    attribute of the thinker, so a deep copy (a DPO reference model) gets its own context and hook."""
    thinker = find_thinker(model)
    context = getattr(thinker, _CONTEXT_ATTR, None)
    if context is None:
        config = thinker.config
        context = ModalityContext(visual_ids=(config.image_token_id, config.video_token_id),
                                  audio_ids=(config.audio_token_id,))
        thinker.register_forward_pre_hook(context.before_forward, with_kwargs=True)
        setattr(thinker, _CONTEXT_ATTR, context)
    return context


# ---- MoSE ----

@dataclass
class _TokensSlot:
    """Carries one layer's TokenModalities from its attention's pre-hook to its FFN's forward hook."""

    tokens: TokenModalities | None = None


def _take_tokens(slot: _TokensSlot, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    slot.tokens = kwargs.get(TOKENS_KWARG)


def _add_experts(experts: MoseExperts, slot: _TokensSlot, module: nn.Module, args: tuple,
                 output: torch.Tensor) -> torch.Tensor:
    x, tokens = args[0], slot.tokens
    if tokens is None or tokens.new_visual.shape != x.shape[:2]:
        got = None if tokens is None else list(tokens.new_visual.shape)
        raise RuntimeError(f"MoSE layer {experts.layer_idx}: token masks {got} for inputs {list(x.shape[:2])}; "
                           "call the thinker itself (with input_ids), not its language model")
    return output + experts(x, tokens.new_visual, _layer_lambda(experts, x, tokens))


def _layer_lambda(experts: MoseExperts, x: torch.Tensor, tokens: TokenModalities) -> torch.Tensor:
    if tokens.gate_mask is None:  # decoding: the prompt's lambda, from the forward that filled the cache
        lam = tokens.gates.get(experts.layer_idx)
        if lam is None or lam.shape[0] != x.shape[0]:
            raise RuntimeError(f"MoSE layer {experts.layer_idx}: no lambda from the prompt's forward")
        return lam
    lam = experts.gate_value(x, tokens.new_visual, tokens.gate_mask)
    tokens.gates[experts.layer_idx] = lam.detach()
    return lam


def _layer_indices(config: MoseConfig, num_layers: int) -> list[int]:
    if config.layers == "all":
        return list(range(num_layers))
    if max(config.layers) >= num_layers:
        raise ValueError(f"mose.layers {config.layers}: the language model has {num_layers} layers")
    return sorted(config.layers)


def attach_mose(model: nn.Module, config: MoseConfig) -> list[MoseExperts]:
    """Add MoSE experts to the FFN of the chosen LM layers and freeze every other parameter of `model`.

    The experts are child modules (`...mlp.mose`), so they are in the model's state_dict (and a DeepSpeed
    checkpoint) while the base weights keep their names; `mose_state_dict` / `save_mose` keep only them."""
    thinker = find_thinker(model)
    layers = submodule(thinker, "language_model").layers
    if any(hasattr(layer.mlp, EXPERTS_NAME) for layer in layers):
        raise ValueError("MoSE is already attached to this model")
    hidden, attached = thinker.config.get_text_config().hidden_size, []
    for index in _layer_indices(config, len(layers)):
        layer, slot = layers[index], _TokensSlot()
        weight = next(layer.mlp.parameters())
        experts = MoseExperts(hidden, config, index).to(weight.device, weight.dtype)
        layer.mlp.add_module(EXPERTS_NAME, experts)
        layer.self_attn.register_forward_pre_hook(functools.partial(_take_tokens, slot), with_kwargs=True)
        layer.mlp.register_forward_hook(functools.partial(_add_experts, experts, slot))
        attached.append(experts)
    modality_context(thinker).mose_config = config
    model.requires_grad_(False)
    for experts in attached:
        experts.requires_grad_(True)
    return attached


def mose_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The MoSE parameters, keyed by their names in the thinker's state_dict."""
    marker = f".{EXPERTS_NAME}."
    return {name: value for name, value in find_thinker(model).state_dict().items() if marker in name}


def load_mose_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load MoSE parameters into a model with MoSE attached (same config): every key, nothing else."""
    own = mose_state_dict(model)
    if not own:
        raise ValueError("attach MoSE (attach_mose) before loading its parameters")
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise KeyError(f"MoSE state mismatch: missing {missing[:3]} ({len(missing)}), "
                       f"unexpected {unexpected[:3]} ({len(unexpected)})")
    with torch.no_grad():
        for name, value in own.items():
            if value.shape != state[name].shape:
                raise ValueError(f"{name}: shape {list(state[name].shape)}, model has {list(value.shape)}")
            value.copy_(state[name])


def save_mose(model: nn.Module, folder: str | Path) -> Path:
    """MoSE weights (safetensors) and config (JSON) into `folder`; the frozen base model is not written."""
    from safetensors.torch import save_file

    config = modality_context(model).mose_config
    if config is None:
        raise ValueError("no MoSE attached to this model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in mose_state_dict(model).items()}, folder / MOSE_WEIGHTS)
    (folder / MOSE_CONFIG).write_text(json.dumps(config.model_dump(), indent=2))
    return folder


def load_mose(model: nn.Module, folder: str | Path) -> MoseConfig:
    """Attach MoSE with the saved config to a base thinker and load the saved weights."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = MoseConfig.model_validate_json((folder / MOSE_CONFIG).read_text())
    attach_mose(model, config)
    load_mose_state_dict(model, load_file(folder / MOSE_WEIGHTS))
    return config


# ---- AR ----

def enable_attention_reallocation(model: nn.Module, tau: float = 1.0) -> None:
    """Switch the thinker's language model (only: not the audio or vision encoders) to "eager_ar", which
    reallocates attention on the decoded query rows: every row of a decoding step, and in the prompt's forward
    only its last row, the one that decodes the first new token. The rest of the prompt is left alone: AR is
    defined per decoding step (paper Sec. 5.2), and the prompt's keys/values are what every step attends to."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    register_eager_ar()
    lm_config = submodule(find_thinker(model), "language_model").config
    context = modality_context(model)
    if context.ar_tau is None:
        context.attn_before_ar = lm_config._attn_implementation
    lm_config._attn_implementation = EAGER_AR
    context.ar_tau = tau


def disable_attention_reallocation(model: nn.Module) -> None:
    """Back to the language model's attention implementation from before enable_attention_reallocation."""
    context = modality_context(model)
    if context.ar_tau is None:
        return
    submodule(find_thinker(model), "language_model").config._attn_implementation = context.attn_before_ar
    context.ar_tau = None


@contextmanager
def attention_reallocation(model: nn.Module, tau: float = 1.0) -> Iterator[None]:
    """AR on inside the block (e.g. around generate), off after it."""
    enable_attention_reallocation(model, tau)
    try:
        yield
    finally:
        disable_attention_reallocation(model)
