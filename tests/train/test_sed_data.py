"""Label masking, collation, LR schedule and DeepSpeed config, checked against hand-worked values."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from engine.core.config import ConfigError, load_config
from engine.core.sed import build_sed_target
from train.core.config import DataConfig, SftConfig
from train.core.ds_config import deepspeed_config
from train.data.collate import collate_sed
from train.data.sed_data import IGNORE_INDEX, SedEncoder, mask_labels
from train.recipes.sft import warmup_cosine

FIELDS = {"video_desc": "A kitchen.", "facial_exp_desc": "A frown.", "body_lang_desc": "Arms crossed.",
          "speech_content": "I told you.", "acoustic_feat": "Low and slow.", "sentiment_analysis": "Anger."}


def test_mask_labels_by_hand():
    ids, labels = mask_labels([5, 6, 7], [8, 9])
    assert ids == [5, 6, 7, 8, 9]
    assert labels == [-100, -100, -100, 8, 9]


def test_label_mask_token_by_token_on_a_real_example(tiny_omni):
    processor = AutoProcessor.from_pretrained(tiny_omni)
    tok = processor.tokenizer
    encoder = SedEncoder(processor, DataConfig(sed="x", max_pixels=56 * 56))
    frames = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    audio = np.zeros(16000, dtype=np.float32)
    record = {"clip_id": "c", "lang": "en", "target": build_sed_target(FIELDS)}
    example = encoder.encode(record, frames, audio)
    ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    # Every position before the target is masked: system, user text, all media placeholders, header.
    assert all(lab == IGNORE_INDEX for lab in labels[:first])
    for token in ("<|VIDEO|>", "<|AUDIO|>", "<|im_start|>"):
        token_id = tok.convert_tokens_to_ids(token)
        assert all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == token_id), token
    # ... the prompt ends with the assistant header, and from there on labels equal the inputs.
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert labels[first:] == ids[first:]
    assert tok.decode(ids[first:]) == record["target"] + "<|im_end|>"
    # The processor's own count of video/audio tokens is what the prompt holds (4 frames of 56x56:
    # grid (2, 4, 4), 2*4*4/4 = 8 video tokens).
    assert example["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert ids.count(tok.convert_tokens_to_ids("<|VIDEO|>")) == 8
    # 1 s of audio: 100 mel frames, kept unpadded (the extractor pads to 30 s).
    assert example["input_features"].shape == (128, 100)


def test_collate_pads_and_concatenates():
    batch = {
        "input_ids": [np.array([1, 2, 3]), np.array([4])],
        "labels": [np.array([-100, 2, 3]), np.array([4])],
        "pixel_values_videos": [np.ones((2, 6)), np.zeros((4, 6))],
        "video_grid_thw": [np.array([[1, 1, 2]]), np.array([[1, 2, 2]])],
        "video_second_per_grid": [np.array([1.0]), np.array([0.5])],
        "input_features": [np.ones((3, 5)), np.ones((3, 2))],
    }
    out = collate_sed(batch, pad_token_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["pixel_values_videos"].shape == (6, 6) and out["video_grid_thw"].tolist() == [[1, 1, 2], [1, 2, 2]]
    assert out["input_features"].shape == (2, 3, 5)
    assert out["feature_attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert out["input_features"][1, :, 2:].abs().sum() == 0
    assert out["video_second_per_grid"].dtype == torch.float32


def test_warmup_cosine_by_hand():
    assert warmup_cosine(0, 4, 20) == 0.25 and warmup_cosine(3, 4, 20) == 1.0
    assert warmup_cosine(4, 4, 20) == 1.0  # cosine starts at 1
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.5
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0) and warmup_cosine(25, 4, 20) == pytest.approx(0.0)


def _config(*overrides):
    base = ["storage_path=/tmp/x", "data.sed=/tmp/s", "distributed.use_gpu=false", "distributed.backend=gloo"]
    return load_config(SftConfig, None, base + list(overrides))


def test_deepspeed_configs_are_filled():
    for stage in (2, 3):
        config = _config("optim.global_batch=8", "optim.micro_batch=2", "distributed.num_workers=2",
                         f"distributed.zero_stage={stage}")
        ds = deepspeed_config(config, bf16=False)
        assert ds["zero_optimization"]["stage"] == stage
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 2)
        assert ds["bf16"]["enabled"] is False and ds["gradient_clipping"] == 1.0


def test_batch_arithmetic_and_backend_are_checked_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(SftConfig, None, ["optim.global_batch=6", "optim.micro_batch=4", "distributed.num_workers=2"])
    text = str(info.value)
    assert "storage_path: missing" in text and "data.sed: missing" in text
    assert "multiple of micro_batch x num_workers (8)" in text


def test_shipped_training_configs_validate():
    for name in ("sft_demo", "sft_production"):
        config = load_config(SftConfig, f"jobs/configs/{name}.yaml", ["data.sed=/x", "storage_path=/y"])
        assert config.grad_accum >= 1
    production = load_config(SftConfig, "jobs/configs/sft_production.yaml", ["data.sed=/x", "storage_path=/y"])
    assert (production.optim.epochs, production.optim.global_batch, production.optim.lr) == (2, 128, 1e-4)
    assert production.distributed.num_workers == 8 and production.model.path == "Qwen/Qwen2.5-Omni-7B"


def _encode(tiny_omni, **data):
    processor = AutoProcessor.from_pretrained(tiny_omni)
    encoder = SedEncoder(processor, DataConfig(sed="x", max_pixels=56 * 56, **data))
    example = encoder.encode({"clip_id": "c", "lang": "en", "target": "## Reasoning\nAnger."},
                             np.zeros((4, 56, 56, 3), dtype=np.uint8), np.full(32000, 0.1, dtype=np.float32))
    return processor, example


def test_audio_as_separate_stream_or_interleaved_in_the_video(tiny_omni):
    processor, separate = _encode(tiny_omni)
    _, interleaved = _encode(tiny_omni, audio_in_video=True)
    tok = processor.tokenizer
    text_separate = tok.decode(separate["input_ids"])
    text_interleaved = tok.decode(interleaved["input_ids"])
    # Separate (default): a video block, then its own audio block.
    assert "<|vision_eos|><|audio_bos|>" in text_separate
    # Interleaved: the audio opens inside the video block; same number of media tokens (8 video, 50 audio).
    assert "<|vision_bos|><|audio_bos|>" in text_interleaved
    for example in (separate, interleaved):
        ids = example["input_ids"].tolist()
        assert ids.count(tok.convert_tokens_to_ids("<|VIDEO|>")) == 8
        assert ids.count(tok.convert_tokens_to_ids("<|AUDIO|>")) == 50


def test_gradient_checkpointing_trains_and_encoders_stay_frozen(tiny_omni):
    from train.core.config import ModelConfig
    from train.core.modeling import load_thinker, submodule

    processor, example = _encode(tiny_omni)
    model = load_thinker(ModelConfig(path=str(tiny_omni), gradient_checkpointing=True))
    model.train()
    assert model.is_activation_checkpointing
    loss = model(**collate_sed({k: [v] for k, v in example.items()}, processor.tokenizer.pad_token_id)).loss
    loss.backward()
    lm_grads = [p.grad for p in submodule(model, "language_model").parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in lm_grads)
    for frozen in ("audio_tower", "visual"):
        assert all(p.grad is None and not p.requires_grad for p in submodule(model, frozen).parameters())
