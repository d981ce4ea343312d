"""Modality-specific experts (MoSE, MoSEAR paper Sec. 5.1, Eqs. 2-4): the modules of one decoder layer.

Each layer's frozen FFN gets three experts added to its output (Eq. 4):

    y = FFN(x) + E_o(x) + lambda * 1[x visual] * E_v(x) + (1 - lambda) * 1[x non-visual] * E_n(x)

The experts sit in parallel to the whole FFN (the decoder layer's `mlp`, SwiGLU gate/up/down in Qwen2.5-Omni),
not to one of its linears: Eq. 4 maps the FFN's input x (d) to an addition to its output (d), a shape no
single SwiGLU linear has (gate/up: d -> intermediate; down: intermediate -> d, fed the activated product, not x).

Each expert is an asymmetric soft mixture of LoRAs (Eq. 2): one shared down-projection A (r x d), N
up-projections B_i (d x r), mixed per token by softmax(W x). The up-projections start at zero, so an attached
model computes exactly what the base model does until training moves them. lambda (Eq. 3) is one number per
sample and layer: 1/2 + eps * tanh(f(mean visual x; mean non-visual x)), f a two-layer MLP.

These modules take the token masks as arguments; attach.py works out the masks from input_ids and feeds them.
"""

from __future__ import annotations

import torch
from torch import nn

from train.core.config import MoseConfig

__all__ = ["LoraMixture", "ModalityGate", "MoseConfig", "MoseExperts", "masked_mean"]


class LoraMixture(nn.Module):
    """One expert: E(x) = sum_i alpha_i(x) B_i A x with alpha(x) = softmax(W x) (Eq. 2)."""

    def __init__(self, hidden: int, rank: int, num_up: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(hidden, rank, bias=False)  # A, shared by the N up-projections
        # W keeps its random init: at W = 0 every B_i would get the same gradient forever and never differ.
        self.router = nn.Linear(hidden, num_up, bias=False)
        # [B_1 | ... | B_N] as one d x (N r) matrix: sum_i alpha_i B_i z = [B_1 ... B_N] (alpha_1 z; ...; alpha_N z).
        self.expand = nn.Linear(num_up * rank, hidden, bias=False)
        nn.init.zeros_(self.expand.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)  # [..., r]
        alpha = self.router(x).float().softmax(-1).to(x.dtype)  # [..., N]
        return self.expand((alpha.unsqueeze(-1) * reduced.unsqueeze(-2)).flatten(-2))


class ModalityGate(nn.Module):
    """lambda = 1/2 + eps * tanh(f(v; n)) per sample (Eq. 3); f's last layer starts at zero, so lambda = 1/2."""

    def __init__(self, hidden: int, gate_hidden: int, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.net = nn.Sequential(nn.Linear(2 * hidden, gate_hidden), nn.SiLU(), nn.Linear(gate_hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, visual_mean: torch.Tensor, nonvisual_mean: torch.Tensor) -> torch.Tensor:
        """[B, d] and [B, d] -> lambda [B]."""
        score = self.net(torch.cat([visual_mean, nonvisual_mean], dim=-1)).squeeze(-1)
        return 0.5 + self.epsilon * torch.tanh(score)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions of x [B, T, d] where mask [B, T] is true: [B, d], zeros where none is
    (a sample without video). Summed in float32: a 7B prompt has thousands of tokens and bf16 has 8 bits."""
    weights = mask.unsqueeze(-1).float()
    return ((x.float() * weights).sum(1) / weights.sum(1).clamp_min(1)).to(x.dtype)


class MoseExperts(nn.Module):
    """The three experts and the gate of one decoder layer: everything of Eq. 4 but the frozen FFN."""

    def __init__(self, hidden: int, config: MoseConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.omni_expert = LoraMixture(hidden, config.rank, config.num_experts)  # E_o: all tokens
        self.visual_expert = LoraMixture(hidden, config.rank, config.num_experts)  # E_v: visual tokens
        self.nonvisual_expert = LoraMixture(hidden, config.rank, config.num_experts)  # E_n: audio and text
        self.gate = ModalityGate(hidden, config.gate_hidden, config.epsilon)

    def gate_value(self, x: torch.Tensor, visual: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        """lambda [B] from the mean visual and mean non-visual inputs x [B, T, d], over the `counted` [B, T]
        positions only (attach.py: the prompt's real tokens, so training and generation agree)."""
        return self.gate(masked_mean(x, visual & counted), masked_mean(x, ~visual & counted))

    def forward(self, x: torch.Tensor, visual: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """The experts' addition to the FFN output for inputs x [B, T, d], visual-token mask [B, T], lambda [B]."""
        lam = lam.to(x.dtype)[:, None, None]
        by_modality = torch.where(visual.unsqueeze(-1), lam * self.visual_expert(x),
                                  (1 - lam) * self.nonvisual_expert(x))
        return self.omni_expert(x) + by_modality
