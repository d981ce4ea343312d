"""A tiny Qwen2.5-VL and a tiny Qwen2 causal LM, built on the fly, for tests and the CPU demo.

The companions of `engine.devkit.tiny_models.build_tiny_omni`: production loads "Qwen/Qwen2.5-VL-7B-Instruct" or
"Qwen/Qwen2.5-7B-Instruct" with `from_pretrained`; offline, these build a folder with the same layout
(config, safetensors, tokenizer, chat template, processor configs) that the very same calls load:

    path = build_tiny_qwen2_5_vl(Path(".cache/tiny_vl"))   # cached: a rerun with the same args is free
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)

    path = build_tiny_causal_lm(Path(".cache/tiny_lm"))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)

Both reuse the Omni build's byte-level BPE, its marker-file cache and its atomic publish; only the special
tokens, the chat template and the model differ.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import transformers
from tokenizers import AddedToken, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# The Omni build's private pieces are shared on purpose: one BPE corpus, one cache/publish protocol.
from engine.devkit.tiny_corpus import train_bpe
from engine.devkit.tiny_models import (
    _mrope_section,
    cached_build,
    save_seeded_model,
)

__all__ = ["LM_CHAT_TEMPLATE", "VL_CHAT_TEMPLATE", "VL_SPECIAL_TOKENS", "build_tiny_causal_lm",
           "build_tiny_qwen2_5_vl"]

BUILD_VERSION = 1  # bump when what is built changes, so old caches are rebuilt

# Qwen2.5-VL's special tokens in the order of the real vocabulary (151643 onwards), minus the
# object-ref/box/quad grounding tokens nothing here uses. The plain LM uses the first three.
VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LM_SPECIAL_TOKENS = VL_SPECIAL_TOKENS[:3]

# The template Qwen2.5-VL-Instruct ships (chat_template.json), verbatim in behaviour.
VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-Instruct's template without the tool-calling branches: string contents only.
LM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------- tokenizer


def _tokenizer(out_dir: Path, vocab_size: int, special_tokens: list[str], template: str) -> PreTrainedTokenizerFast:
    """The Omni build's BPE with these special tokens appended (so they take the last ids), saved to out_dir."""
    min_size = len(pre_tokenizers.ByteLevel.alphabet()) + len(special_tokens)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size={vocab_size} is too small: the byte alphabet and special tokens need {min_size}")
    backend = train_bpe(vocab_size - len(special_tokens))
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        # Listed so that all_special_tokens (and skip_special_tokens) cover the whole set.
        extra_special_tokens=[token for token in special_tokens if token not in ("<|im_end|>", "<|endoftext|>")],
        chat_template=template,
        model_max_length=32_768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


# ---------------------------------------------------------------- configs


def _text_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int, num_layers: int) -> dict[str, object]:
    num_heads = 4
    if hidden_size % (2 * num_heads):
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of {2 * num_heads} (4 heads, even head dim)")
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32_768,
        # Qwen convention: bos and pad are <|endoftext|>, eos is <|im_end|>.
        "bos_token_id": pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    }


def _vl_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int, num_layers: int) -> Qwen2_5_VLConfig:
    text = _text_config(tokenizer, hidden_size, num_layers)
    # Without mrope_section the rotary embedding falls back to the 7B's [16, 24, 24], which only fits
    # head_dim 128: it must sum to head_dim/2 (modeling_qwen2_5_vl.py, Qwen2_5_VLRotaryEmbedding).
    text["rope_parameters"] |= {"mrope_section": _mrope_section(hidden_size // 4)}
    # The real patch/merge/temporal geometry (14, 2, 2) so the processor's grids apply unchanged; the last
    # of the 2 blocks attends globally, the other in windows, as in the real encoder.
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2)
    vision |= dict(temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1], out_hidden_size=hidden_size)
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _save_vl_processor(out_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    # Small saved pixel budgets keep CPU fast; callers that care pass images_kwargs/videos_kwargs sizes.
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        # cap_pixels_per_frame=True: the reference (qwen-vl-utils) behaviour, and silences a warning.
        video_processor=Qwen2VLVideoProcessor(size=pixels, cap_pixels_per_frame=True),
        tokenizer=tokenizer,
        chat_template=VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)


# ---------------------------------------------------------------- builders


def _build_vl(staging: Path, seed: int, vocab_size: int, hidden_size: int, num_layers: int) -> None:
    tokenizer = _tokenizer(staging, vocab_size, VL_SPECIAL_TOKENS, VL_CHAT_TEMPLATE)
    save_seeded_model(staging, Qwen2_5_VLForConditionalGeneration, _vl_config(tokenizer, hidden_size, num_layers), seed)
    _save_vl_processor(staging, tokenizer)


def _build_lm(staging: Path, seed: int, vocab_size: int, hidden_size: int, num_layers: int) -> None:
    tokenizer = _tokenizer(staging, vocab_size, LM_SPECIAL_TOKENS, LM_CHAT_TEMPLATE)
    config = Qwen2Config(**_text_config(tokenizer, hidden_size, num_layers), tie_word_embeddings=True)
    save_seeded_model(staging, Qwen2ForCausalLM, config, seed)


_Builder = Callable[[Path, int, int, int, int], None]


def _cached_build(out_dir: Path, kind: str, builder: _Builder, seed: int, vocab_size: int, hidden_size: int,
                  num_layers: int) -> Path:
    params = {"build_version": BUILD_VERSION, "kind": kind, "transformers": transformers.__version__,
              "seed": seed, "vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers}
    return cached_build(Path(out_dir), params,
                        lambda staging: builder(staging, seed, vocab_size, hidden_size, num_layers))


def build_tiny_qwen2_5_vl(
    out_dir: Path, *, seed: int = 0, vocab_size: int = 600, hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Write a Qwen2.5-VL model + processor folder that `from_pretrained` loads offline; return out_dir.

    Deterministic for its arguments and cached like `build_tiny_omni`.
    """
    return _cached_build(out_dir, "qwen2_5_vl", _build_vl, seed, vocab_size, hidden_size, num_layers)


def build_tiny_causal_lm(
    out_dir: Path, *, seed: int = 0, vocab_size: int = 600, hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Write a Qwen2 causal LM + tokenizer (plain Qwen chat template) folder; return out_dir.

    Loads with AutoModelForCausalLM / AutoTokenizer; deterministic for its arguments and cached.
    """
    return _cached_build(out_dir, "causal_lm", _build_lm, seed, vocab_size, hidden_size, num_layers)
