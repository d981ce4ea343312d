"""A tiny Qwen2.5-Omni thinker + processor, built on the fly, for tests and the CPU demo.

Production loads "Qwen/Qwen2.5-Omni-7B" with `from_pretrained`. This machine (and CI) has no model hub,
so tests and the demo build a folder with the same layout — config, safetensors, tokenizer, chat template,
processor configs — and go through the very same loading code:

    path = build_tiny_omni(Path(".cache/tiny_omni"))   # cached: a rerun with the same args is free
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path)
    processor = Qwen2_5OmniProcessor.from_pretrained(path)

The tokenizer is a byte-level BPE trained here on a small built-in corpus, with the Qwen special tokens;
the config's token ids are read back from it, so the two can never disagree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, pre_tokenizers
from transformers import (
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)

from engine.devkit.tiny_corpus import train_bpe

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_omni", "build_tiny_tokenizer"]

BUILD_VERSION = 1  # bump when what is built changes, so old caches are rebuilt
MARKER_FILE = "tiny_build.json"
SAMPLING_RATE = 16_000
NUM_MEL_BINS = 128  # Qwen2.5-Omni's audio encoder takes 128 mel bins, not Whisper's usual 80

# Qwen2.5-Omni's special tokens, in the order of the real vocabulary (151643 onwards), minus the
# box/quad grounding tokens nothing here uses.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
]
# Qwen2_5OmniProcessor.__init__ reads these named attributes off the tokenizer (tokenizer.audio_token,
# tokenizer.audio_token_id, ...): they must be saved in tokenizer_config.json under these names.
NAMED_SPECIAL_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# The chat template Qwen2.5-Omni ships: system/user/assistant turns as <|im_start|>role\n...<|im_end|>\n,
# media items as bos/placeholder/eos triples that the processor later expands to one token per embedding.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------- tokenizer


def build_tiny_tokenizer(out_dir: Path, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train the BPE, append the Qwen special tokens (so they take the last ids), save to out_dir.

    The result has at most `vocab_size` tokens (fewer only if the corpus runs out of merges).
    """
    min_size = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size={vocab_size} is too small: the byte alphabet and special tokens need {min_size}")
    backend = train_bpe(vocab_size - len(SPECIAL_TOKENS))
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        # Named tokens become tokenizer.audio_token etc.; the others are listed so that
        # all_special_tokens (and skip_special_tokens) cover the whole set.
        model_specific_special_tokens=NAMED_SPECIAL_TOKENS,
        extra_special_tokens=[token for token in SPECIAL_TOKENS if token not in NAMED_SPECIAL_TOKENS.values()],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32_768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


# ---------------------------------------------------------------- config and model


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (temporal, height, width) like Qwen's [16, 24, 24] of 64."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "audio_token_index": ids("<|AUDIO|>"),
        "image_token_index": ids("<|IMAGE|>"),
        "video_token_index": ids("<|VIDEO|>"),
        "audio_start_token_id": ids("<|audio_bos|>"),
        "audio_end_token_id": ids("<|audio_eos|>"),
        # Not fields of Qwen2_5OmniThinkerConfig, but get_rope_index reads config.vision_start_token_id
        # (the real checkpoint's config.json carries all three).
        "vision_start_token_id": ids("<|vision_bos|>"),
        "vision_end_token_id": ids("<|vision_eos|>"),
        "vision_token_id": ids("<|vision_pad|>"),
        # Stored for parity with the real config; the thinker's modeling code does not read it.
        "user_token_id": tokenizer.encode("user", add_special_tokens=False)[0],
    }


def _text_config(vocab_size: int, hidden_size: int, num_layers: int, special: dict[str, int]) -> dict[str, object]:
    num_heads = 4
    if hidden_size % (2 * num_heads):
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of {2 * num_heads} (4 heads, even head dim)")
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32_768,
        # mrope_section must sum to head_dim/2: the rotary embedding splits the frequencies with it.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": _mrope_section(hidden_size // num_heads),
        },
        **special,
    }


def _thinker_config(
    tokenizer: PreTrainedTokenizerFast, vocab_size: int, hidden_size: int, num_layers: int
) -> Qwen2_5OmniThinkerConfig:
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # Qwen convention: bos and pad are <|endoftext|>, eos is <|im_end|>.
    special = {"bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad}
    # Both encoders project into the text hidden size: their features replace the placeholder embeddings.
    # Vision: the real patch/merge/temporal geometry (14, 2, 2) so the processor's grids apply unchanged;
    # the last of the 2 blocks attends globally, the other in windows, as in the real encoder.
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2)
    vision |= dict(temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1], out_hidden_size=hidden_size)
    audio = dict(num_mel_bins=NUM_MEL_BINS, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64)
    audio |= dict(d_model=32, output_dim=hidden_size)
    return Qwen2_5OmniThinkerConfig(
        text_config=_text_config(vocab_size, hidden_size, num_layers, special),
        vision_config=vision,
        audio_config=audio,
        **_token_ids(tokenizer),
        **special,
    )


def save_seeded_model(out_dir: Path, model_class: type[PreTrainedModel], config: PreTrainedConfig, seed: int) -> None:
    """A randomly initialised model, reproducible for a seed, saved with a generation config that stops on
    <|im_end|> or <|endoftext|> (every tiny builder shares this)."""
    # fork_rng: seeding for a reproducible init must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    text = config.get_text_config()
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, text.pad_token_id],  # stop on <|im_end|> or <|endoftext|>
        pad_token_id=text.pad_token_id,
    )
    # transformers 5 always writes model.safetensors (there is no safe_serialization switch any more).
    model.save_pretrained(out_dir)


# ---------------------------------------------------------------- processor


def _save_processor(out_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    # Small pixel budgets keep CPU fast. Images honour them; videos only when the video processor is called
    # directly: Qwen2_5OmniProcessor.__call__ imposes its class default videos_kwargs size (>= 128*28*28
    # pixels a frame) unless the caller passes videos_kwargs, exactly as it does for the real checkpoint.
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        # cap_pixels_per_frame=True: the reference (qwen-vl-utils) behaviour, and silences a warning.
        video_processor=Qwen2VLVideoProcessor(size=pixels, cap_pixels_per_frame=True),
        feature_extractor=WhisperFeatureExtractor(feature_size=NUM_MEL_BINS, sampling_rate=SAMPLING_RATE),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)


# ---------------------------------------------------------------- cache and entry point


def _params(seed: int, vocab_size: int, hidden_size: int, num_layers: int) -> dict[str, object]:
    return {
        "build_version": BUILD_VERSION,
        "transformers": transformers.__version__,  # a saved config may not load under another version
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
    }


def _read_marker(out_dir: Path) -> dict[str, object] | None:
    try:
        return json.loads((out_dir / MARKER_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty folder or an earlier build of ours may be replaced: never a folder of someone else's."""
    if out_dir.is_dir() and _read_marker(out_dir) is None and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and holds no tiny build: refusing to overwrite it")


def _publish(staging: Path, out_dir: Path, params: dict[str, object]) -> None:
    """Move a finished build into place; the folder only ever appears complete."""
    if _read_marker(out_dir) is not None:
        shutil.rmtree(out_dir, ignore_errors=True)  # an older build of ours, with other parameters
    try:
        os.replace(staging, out_dir)  # atomic; replaces an empty directory
    except OSError:
        # Another process (e.g. a second Ray worker) published the same build first: fine if it matches.
        if _read_marker(out_dir) != params:
            raise


def _build(staging: Path, seed: int, vocab_size: int, hidden_size: int, num_layers: int) -> None:
    tokenizer = build_tiny_tokenizer(staging, vocab_size)
    config = _thinker_config(tokenizer, vocab_size, hidden_size, num_layers)
    save_seeded_model(staging, Qwen2_5OmniThinkerForConditionalGeneration, config, seed)
    _save_processor(staging, tokenizer)


def cached_build(out_dir: Path, params: dict[str, object], build: Callable[[Path], None]) -> Path:
    """Runs `build` into a sibling temp folder and renames it into place, unless out_dir already holds a
    finished build with these params; an interrupted or concurrent build never leaves a half-written out_dir."""
    if _read_marker(out_dir) == params:
        return out_dir
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published folder should read like any other
    try:
        build(staging)
        # The marker goes last: its presence means the folder is complete.
        (staging / MARKER_FILE).write_text(json.dumps(params, indent=2, sort_keys=True))
        _publish(staging, out_dir, params)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def build_tiny_omni(
    out_dir: Path, *, seed: int = 0, vocab_size: int = 600, hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Write a Qwen2.5-Omni thinker + processor folder that `from_pretrained` loads offline; return out_dir.

    Deterministic for its arguments, and cached: a folder holding a finished build with the same
    parameters is returned at once. The build happens in a sibling temp folder that is renamed into place,
    so an interrupted or concurrent build never leaves a half-written out_dir behind.
    """
    params = _params(seed, vocab_size, hidden_size, num_layers)
    return cached_build(Path(out_dir), params,
                        lambda staging: _build(staging, seed, vocab_size, hidden_size, num_layers))
