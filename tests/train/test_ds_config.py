"""train.core.ds_config: `distributed.zero_stage: auto` picks ZeRO-2 or ZeRO-3 from the model's parameter count."""

import json

import pytest
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from engine.core.config import load_config
from train.core.config import SftConfig
from train.core.ds_config import deepspeed_config, parameter_count, resolve_zero_stage
from train.recipes.dpo_config import DpoConfig

BASE = ["storage_path=/tmp/x", "data.sed=/tmp/s", "distributed.use_gpu=false", "distributed.backend=gloo",
        "distributed.num_workers=2", "optim.global_batch=2"]


def test_parameter_count_is_the_loaded_models(tiny_omni):
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_omni)
    assert parameter_count(str(tiny_omni)) == sum(p.numel() for p in model.parameters())


def test_auto_takes_zero2_below_the_threshold_and_zero3_from_it(tiny_omni):
    count = parameter_count(str(tiny_omni))
    small = resolve_zero_stage(load_config(SftConfig, None, [*BASE, "distributed.zero_stage=auto"]), str(tiny_omni))
    assert small.distributed.zero_stage == 2  # a tiny model, far below the default billion
    at = load_config(SftConfig, None, [*BASE, "distributed.zero_stage=auto", f"distributed.zero3_min_params={count}"])
    assert resolve_zero_stage(at, str(tiny_omni)).distributed.zero_stage == 3
    assert deepspeed_config(resolve_zero_stage(at, str(tiny_omni)), bf16=False)["zero_optimization"]["stage"] == 3
    explicit = load_config(SftConfig, None, [*BASE, "distributed.zero_stage=3"])
    assert resolve_zero_stage(explicit, "/nonexistent") is explicit  # nothing counted


def test_an_unresolved_auto_stage_is_refused_by_the_deepspeed_config():
    with pytest.raises(ValueError, match="resolve_zero_stage"):
        deepspeed_config(load_config(SftConfig, None, [*BASE, "distributed.zero_stage=auto"]), bf16=False)


def test_the_resolved_stage_is_validated_again(tiny_omni):
    """fused_logps needs ZeRO-2: `auto` passes validation, its resolution to ZeRO-3 must not."""
    config = load_config(DpoConfig, None, ["storage_path=/tmp/x", "data.preferences=/tmp/p", "model.path=/tmp/m",
                                           "distributed.use_gpu=false", "distributed.backend=gloo",
                                           "distributed.num_workers=2", "optim.global_batch=2", "fused_logps=true",
                                           "distributed.zero_stage=auto", "distributed.zero3_min_params=1"])
    with pytest.raises(ValueError, match="fused_logps"):
        resolve_zero_stage(config, str(tiny_omni))


def test_demo_configs_choose_by_size_and_production_keeps_zero3():
    sft = load_config(SftConfig, "jobs/configs/sft_demo.yaml", ["data.sed=/x", "storage_path=/y"])
    dpo = load_config(DpoConfig, "jobs/configs/dpo_demo.yaml", ["data.preferences=/x", "storage_path=/y"])
    assert sft.distributed.zero_stage == dpo.distributed.zero_stage == "auto"
    production = load_config(SftConfig, "jobs/configs/sft_production.yaml", ["data.sed=/x", "storage_path=/y"])
    assert production.distributed.zero_stage == 3


def test_a_whole_omni_models_config_is_counted_by_its_thinker(tiny_omni, tmp_path):
    """Qwen/Qwen2.5-Omni-7B's config.json nests the thinker's under thinker_config (with the talker's beside it)."""
    thinker = json.loads((tiny_omni / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni", "thinker_config": thinker,
                                                      "enable_audio_output": False}))
    assert parameter_count(str(tmp_path)) == parameter_count(str(tiny_omni))
