"""The tiny Qwen2.5-Omni folder loads through the production from_pretrained calls and runs real multimodal
forward and generate passes on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

from engine.devkit.tiny_models import CHAT_TEMPLATE, MARKER_FILE, NAMED_SPECIAL_TOKENS, SPECIAL_TOKENS, build_tiny_omni
from train.data.sed_data import mask_labels, sed_messages, target_token_ids

SR = 16_000
CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "You are an emotion analyst."}]},
    {
        "role": "user",
        "content": [{"type": "video"}, {"type": "audio"}, {"type": "text", "text": "How does she feel?"}],
    },
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_omni(tmp_path_factory.mktemp("tiny") / "omni", seed=0)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Qwen2_5OmniThinkerForConditionalGeneration:
    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def processor(tiny_dir: Path) -> Qwen2_5OmniProcessor:
    return Qwen2_5OmniProcessor.from_pretrained(tiny_dir)


def _frames(seed: int = 0) -> np.ndarray:
    """4 RGB frames, 56x56, uint8: (T, H, W, C) as decord hands them over."""
    return np.random.default_rng(seed).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)


def _sine(seconds: float = 2.0, hz: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(processor: Qwen2_5OmniProcessor) -> dict[str, torch.Tensor]:
    text = processor.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    # Audio as its own stream, not decoded from the video: the official SABER inference layout.
    return processor(text=text, videos=[_frames()], audio=[_sine()], return_tensors="pt")


def test_folder_loads_offline_with_matching_ids(tiny_dir: Path, model, processor) -> None:
    assert (tiny_dir / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    tokenizer, config = processor.tokenizer, model.config
    assert len(tokenizer) == config.text_config.vocab_size == 600
    ids = tokenizer.convert_tokens_to_ids
    assert config.audio_token_id == processor.audio_token_id == ids("<|AUDIO|>")
    assert config.video_token_id == processor.video_token_id == ids("<|VIDEO|>")
    assert config.image_token_id == processor.image_token_id == ids("<|IMAGE|>")
    assert config.audio_start_token_id == ids("<|audio_bos|>")
    assert config.audio_end_token_id == ids("<|audio_eos|>")
    assert config.vision_start_token_id == ids("<|vision_bos|>")
    assert config.text_config.eos_token_id == tokenizer.eos_token_id == ids("<|im_end|>")
    assert config.text_config.pad_token_id == tokenizer.pad_token_id == ids("<|endoftext|>")
    # The Qwen special tokens are single, unsplittable tokens.
    assert tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)[0] == ids("<|im_start|>")


def test_multimodal_forward(model, processor, inputs) -> None:
    ids = inputs["input_ids"][0]
    grid = inputs["video_grid_thw"][0]
    # 56x56 frames are upscaled to the processor's default minimum of 128*28*28 pixels: smart_resize gives
    # 336x336 = 24x24 patches of 14; 4 frames / temporal patch 2 = 2. Merging 2x2 patches: 2*24*24/4 = 288.
    assert grid.tolist() == [2, 24, 24]
    merge = processor.video_processor.merge_size
    assert (ids == processor.video_token_id).sum().item() == int(grid.prod()) // merge**2 == 288
    # 2 s at hop 160 = 200 mel frames; conv stride 2: (200-1)//2+1 = 100; pooling: (100-2)//2+1 = 50.
    assert inputs["feature_attention_mask"].sum().item() == 200
    assert inputs["input_features"].shape[1] == 128
    assert (ids == processor.audio_token_id).sum().item() == 50

    with torch.no_grad():
        out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (1, ids.numel(), 600)


def test_video_size_override_shrinks_the_grid(processor) -> None:
    """The processor's class default beats the saved video size; an explicit videos_kwargs size beats both."""
    text = processor.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    small = processor(text=text, videos=[_frames()], audio=[_sine()], videos_kwargs={"size": size}, return_tensors="pt")
    # 56x56 is already a multiple of 28 inside the budget: 4x4 patches, 2 temporal, 2*4*4/4 = 8 tokens.
    assert small["video_grid_thw"][0].tolist() == [2, 4, 4]
    assert (small["input_ids"][0] == processor.video_token_id).sum().item() == 8


def test_media_reaches_the_text_logits(model, processor, inputs) -> None:
    """Other frames and other audio change the logits: the encoders' features are really spliced in."""
    text = processor.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    other_video = processor(text=text, videos=[_frames(seed=1)], audio=[_sine()], return_tensors="pt")
    other_audio = processor(text=text, videos=[_frames()], audio=[_sine(hz=880.0)], return_tensors="pt")
    with torch.no_grad():
        last = [model(**batch).logits[0, -1] for batch in (inputs, other_video, other_audio)]
    assert not torch.allclose(last[0], last[1])
    assert not torch.allclose(last[0], last[2])


def test_sampling_generate(model, processor, inputs) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=True, temperature=0.8)
    prompt_len = inputs["input_ids"].shape[1]
    new_tokens = generated[0, prompt_len:]
    assert 1 <= new_tokens.numel() <= 8
    assert torch.equal(generated[0, :prompt_len], inputs["input_ids"][0])
    assert isinstance(processor.tokenizer.decode(new_tokens, skip_special_tokens=True), str)


def test_builder_registers_the_qwen_special_tokens(processor) -> None:
    """Our choices: the Qwen special tokens as the last ids in Qwen's order, each one unsplittable and special."""
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    assert [ids(token) for token in SPECIAL_TOKENS] == list(range(600 - 11, 600))
    assert set(SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)
    # The named ones are the attributes Qwen2_5OmniProcessor reads off the tokenizer.
    named = {name: getattr(tokenizer, name) for name in NAMED_SPECIAL_TOKENS}
    assert named == {
        "image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
    }
    text = "".join(SPECIAL_TOKENS)
    assert tokenizer.encode(text, add_special_tokens=False) == list(range(589, 600))
    assert tokenizer.decode(tokenizer.encode(f"<|im_start|>user\nhi<|im_end|>{text}"), skip_special_tokens=True) == (
        "user\nhi"
    )


def test_chat_template_renders_qwen_layout(tiny_dir: Path, processor) -> None:
    """The template we ship, saved once for the processor and the tokenizer, renders the layout SED trains on."""
    assert (tiny_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert processor.chat_template == processor.tokenizer.chat_template == CHAT_TEMPLATE

    record = {"system": "You are an emotion analyst.", "prompt": "How does she feel?"}
    answer = "Visual evidence: she smiles.\nAcoustic evidence: a bright voice.\nReasoning: she is happy."
    messages = sed_messages(record)
    conversation = [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    rendered = processor.apply_chat_template(conversation, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are an emotion analyst.<|im_end|>\n"
        "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"
        "How does she feel?<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == rendered[: rendered.index(answer)]  # the conversation up to the assistant header
    # Audio interleaved into the video: one placeholder only.
    interleaved = processor.apply_chat_template(sed_messages(record, audio_in_video=True), tokenize=False)
    assert "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>How does she feel?<|im_end|>" in interleaved
    assert "<|AUDIO|>" not in interleaved
    # SED trains on prompt ids + answer ids + <|im_end|>: exactly the ids of the rendered assistant turn.
    tokenizer = processor.tokenizer
    training_ids, _ = mask_labels(tokenizer.encode(prompt), target_token_ids(tokenizer, answer))
    assert training_ids + tokenizer.encode("\n") == tokenizer.encode(rendered)
    # Without a system turn our template adds the Qwen default one.
    assert processor.apply_chat_template(messages[1:], tokenize=False).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    )


class _Rebuilt(Exception):
    """Raised by the builder functions that a cache hit must never reach."""


def test_cached_and_deterministic(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.devkit.tiny_models as tiny_models

    before = {path.name: path.stat().st_mtime_ns for path in tiny_dir.iterdir()}
    siblings = sorted(tiny_dir.parent.iterdir())

    def rebuilt(*args: object, **kwargs: object) -> None:
        raise _Rebuilt

    with monkeypatch.context() as patch:
        for name in ("_build", "build_tiny_tokenizer", "save_seeded_model", "_save_processor", "_publish"):
            patch.setattr(tiny_models, name, rebuilt)
        assert build_tiny_omni(tiny_dir, seed=0) == tiny_dir  # a hit: none of the builders runs
        with pytest.raises(_Rebuilt):  # while a miss does reach them
            build_tiny_omni(tmp_path / "miss", seed=0)
    assert {path.name: path.stat().st_mtime_ns for path in tiny_dir.iterdir()} == before  # nothing rewritten
    assert sorted(tiny_dir.parent.iterdir()) == siblings  # no staging folder either
    assert json.loads((tiny_dir / MARKER_FILE).read_text())["seed"] == 0

    weights = tiny_dir / "model.safetensors"
    again = build_tiny_omni(tmp_path / "again", seed=0)
    reference = load_file(weights)
    rebuilt_weights = load_file(again / "model.safetensors")
    assert reference.keys() == rebuilt_weights.keys()
    assert all(torch.equal(reference[name], rebuilt_weights[name]) for name in reference)
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()

    # Other parameters replace a previous build of ours in place.
    build_tiny_omni(again, seed=1)
    reseeded = load_file(again / "model.safetensors")
    assert not torch.equal(reference["lm_head.weight"], reseeded["lm_head.weight"])


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_tiny_omni(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "not a model"
