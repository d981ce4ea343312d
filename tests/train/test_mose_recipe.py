"""MoSE in the SED recipe: a tiny Omni thinker trains its experts under Ray Train (2 CPU workers, DeepSpeed
ZeRO-2 over gloo); only expert and gate weights change; the final folder loads as a plain thinker plus
mose.safetensors, and generates with attention reallocation on."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from engine.core.config import ConfigError, load_config
from tests.conftest import RAY_TRAIN
from train.core.config import DataConfig, SftConfig
from train.inference.generation import GenerationConfig, ThinkerGenerator
from train.recipes.sft import run

pytestmark = [pytest.mark.slow, RAY_TRAIN]


def test_mose_trains_only_experts_and_generates_with_reallocation(local_ray, tiny_omni, sed_records, tmp_path,
                                                                  one_torch_thread, reallocation_spy):
    config = load_config(SftConfig, "jobs/configs/sft_demo.yaml", [
        f"model.path={tiny_omni}", f"data.sed={sed_records}", f"storage_path={tmp_path}", "data.limit=8",
        "name=mose", "report_every=20", "optim.max_steps=12", "checkpoint_every=12", "distributed.zero_stage=2",
        "mose.enabled=true", "mose.rank=4", "mose.gate_hidden=8", "optim.lr=2e-2",
        # One worker: this test claims no sharding (ZeRO across 2 workers is the SFT and DPO end-to-end tests'
        # claim); a second worker would only add its start-up to the suite.
        "distributed.num_workers=1"])
    summary = run(config)
    rows = [json.loads(line) for line in Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first, (first, last)

    final = summary["final_model"]
    experts = load_file(f"{final}/mose.safetensors")
    assert experts and all(".mlp.mose." in name for name in experts)
    assert any("expand" in n and v.abs().sum() > 0 for n, v in experts.items())  # B left its zero init
    # The saved base is the untouched SFT input: every non-expert weight equals the original.
    base = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_omni).state_dict()
    saved = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(final).state_dict()
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base)

    generator = ThinkerGenerator(final, DataConfig(max_pixels=3136, max_frames=4), attn_implementation="eager")
    assert any(".mose." in n for n, _ in generator.model.named_parameters())  # experts attached on load
    record = {"clip_id": "c", "source_uri": pq.read_table(sed_records).column("source_uri")[0].as_py()}
    answer = generator.generate(record, GenerationConfig(max_new_tokens=8, attention_reallocation=True,
                                                         reallocation_tau=1e-3))
    assert len(answer) == 1
    # Every decoding step of both layers reallocated (a low threshold flags each layer; see test_generation).
    assert reallocation_spy.calls >= 2 and reallocation_spy.changed == reallocation_spy.calls
    print(f"mose: loss {first:.3f} -> {last:.3f} (mean of 3 steps) in 12 steps, {len(experts)} expert tensors")


def test_lora_and_mose_together_are_a_config_error():
    with pytest.raises(ConfigError, match="choose one adapter"):
        load_config(SftConfig, "jobs/configs/sft_demo.yaml", ["lora.enabled=true", "mose.enabled=true"])
