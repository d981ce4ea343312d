"""MoSEAR (seeds/mosear-paper.txt): MoSE experts for training and attention reallocation (AR) for inference,
attached to a loaded Qwen2.5-Omni thinker. See attach.py for how the token masks reach the layers. May import
torch and transformers, and train.core; no Ray, no engine."""

from train.mosear.attach import (
    attach_mose,
    attention_reallocation,
    disable_attention_reallocation,
    enable_attention_reallocation,
    load_mose,
    load_mose_state_dict,
    mose_state_dict,
    save_mose,
)
from train.mosear.mose import MoseConfig, MoseExperts
from train.mosear.realloc import EAGER_AR, eager_ar_attention, reallocate
from train.mosear.tokens import TokenModalities

__all__ = [
    "EAGER_AR",
    "MoseConfig",
    "MoseExperts",
    "TokenModalities",
    "attach_mose",
    "attention_reallocation",
    "disable_attention_reallocation",
    "eager_ar_attention",
    "enable_attention_reallocation",
    "load_mose",
    "load_mose_state_dict",
    "mose_state_dict",
    "reallocate",
    "save_mose",
]
