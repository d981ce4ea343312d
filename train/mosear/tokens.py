"""What a thinker's forward tells its layers about its tokens (`TokenModalities`), and the forward keyword it
travels under. A leaf module: attach.py makes these, realloc.py (AR) and the MoSE experts read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The keyword under which the thinker's forward pre-hook (attach.py) hands the token modalities down:
# transformers passes a forward's extra keywords through the LM and its decoder layers to the attention
# function, and a gradient-checkpointed layer replays them on recomputation.
TOKENS_KWARG = "mosear_tokens"


@dataclass(frozen=True)
class TokenModalities:
    """What one forward of the thinker tells its layers about its tokens."""

    visual: torch.Tensor  # [B, K] bool: image/video positions among all K positions so far (cache + new)
    audio: torch.Tensor  # [B, K] bool: audio positions
    new_visual: torch.Tensor  # [B, Q] bool: visual positions among this forward's Q tokens
    gate_mask: torch.Tensor | None  # [B, Q]: positions lambda averages over; None while decoding (reuse gates)
    gates: dict[int, torch.Tensor]  # lambda [B] per MoSE layer, written by the prompt's forward
    ar_tau: float | None  # AR threshold, None when AR is off
    ar_first_row: int  # AR touches query rows from here on: the decoded positions
