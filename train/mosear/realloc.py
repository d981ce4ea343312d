"""Attention reallocation (AR, MoSEAR paper Sec. 5.2, Eqs. 5-14): training-free, at each decoding step.

In every layer, for each decoded query position, head h puts mass S_h(A) on audio keys and S_h(V) on
visual keys. The layer ratio c = sum_h S_h(A) / sum_h S_h(V) flags the layer as audio-biased when c > tau,
and then every head with c_h = S_h(A) / S_h(V) > c moves

    Delta_h = (S_h(A) - c * S_h(V)) / (1 + c)                                                   (Eq. 14)

from its audio keys to its visual keys, in proportion to the weights already there (Eqs. 12-13), so its
audio/visual ratio becomes c (Eq. 8), its audio + visual mass is unchanged (Eq. 9) and text keys keep
their weights: every row keeps its sum.

`reallocate` is the pure math; `eager_ar_attention` is the transformers attention function ("eager_ar")
that applies it between the softmax and the product with V (attach.py switches the LM to it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from train.mosear.tokens import TOKENS_KWARG, TokenModalities

EAGER_AR = "eager_ar"


def reallocate(attn_weights: torch.Tensor, audio_mask: torch.Tensor, visual_mask: torch.Tensor,
               tau: float = 1.0) -> torch.Tensor:
    """Reallocated attention weights (Eqs. 5-7, 12-14) for attention rows `attn_weights` [B, H, Q, K].

    `audio_mask` / `visual_mask` [B, K] (bool, disjoint) mark the audio and visual key positions; every other
    key is text and keeps its weight. Each (sample, query row) is one decoding step: c is taken over the H
    heads of that row. A head with no visual mass cannot receive any in proportion to its visual weights
    (Eq. 13 divides by S_h(V)), so it is left as it is; so is a sample without visual or audio keys.
    """
    batch, _, _, keys = attn_weights.shape
    if audio_mask.shape != (batch, keys) or visual_mask.shape != (batch, keys):
        raise ValueError(f"masks must be [batch, keys] = {[batch, keys]}, got audio {list(audio_mask.shape)} "
                         f"and visual {list(visual_mask.shape)}")
    audio = audio_mask.to(attn_weights.device, torch.bool)[:, None, None, :]  # [B, 1, 1, K]
    visual = visual_mask.to(attn_weights.device, torch.bool)[:, None, None, :]
    mass_a = (attn_weights * audio).sum(-1, keepdim=True)  # S_h(A): [B, H, Q, 1]
    mass_v = (attn_weights * visual).sum(-1, keepdim=True)  # S_h(V)
    layer_ratio = mass_a.sum(1, keepdim=True) / mass_v.sum(1, keepdim=True)  # c (Eq. 6): [B, 1, Q, 1]
    # c_h > c written as S_h(A) > c * S_h(V), so a head with S_h(V) = 0 never divides by zero; a NaN or infinite
    # c (no visual mass in the whole layer) fails the comparisons and leaves the row alone.
    biased = (layer_ratio > tau) & (mass_a > layer_ratio * mass_v) & (mass_v > 0)  # Eq. 7
    delta = (mass_a - layer_ratio * mass_v) / (1 + layer_ratio)  # Eq. 14
    scale_audio = torch.where(biased, 1 - delta / mass_a, 1.0)  # Eq. 12
    scale_visual = torch.where(biased, 1 + delta / mass_v, 1.0)  # Eq. 13
    factor = torch.where(audio, scale_audio, torch.where(visual, scale_visual, 1.0))
    return attn_weights * factor


def _key_mask(mask: torch.Tensor, keys: int) -> torch.Tensor:
    """The [B, K] mask for K key positions: a static cache has more slots than tokens seen (empty slots are
    neither audio nor visual); fewer positions than keys means the masks lost track of the cache."""
    if mask.shape[1] > keys:
        raise RuntimeError(f"MoSEAR tracked {mask.shape[1]} positions but the attention has {keys} keys")
    return nn.functional.pad(mask, (0, keys - mask.shape[1]), value=False)


def eager_ar_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                       **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention with `reallocate` between the softmax and V, on the decoded query rows
    named by the token modalities (plain eager attention when there are none, or AR is off)."""
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)  # grouped-query heads -> one per query head
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
    tokens: TokenModalities | None = kwargs.get(TOKENS_KWARG)
    if tokens is not None and tokens.ar_tau is not None:
        weights = _reallocate_decoded_rows(weights, tokens)
    weights = nn.functional.dropout(weights.to(query.dtype), p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _reallocate_decoded_rows(weights: torch.Tensor, tokens: TokenModalities) -> torch.Tensor:
    keys, first = weights.shape[-1], tokens.ar_first_row
    audio, visual = _key_mask(tokens.audio, keys), _key_mask(tokens.visual, keys)
    decoded = reallocate(weights[:, :, first:], audio, visual, tokens.ar_tau)
    return torch.cat([weights[:, :, :first], decoded], dim=2)


def register_eager_ar() -> None:
    """Make "eager_ar" a valid attention implementation (its masks are the eager ones). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(EAGER_AR, eager_ar_attention)
    AttentionMaskInterface.register(EAGER_AR, eager_mask)
