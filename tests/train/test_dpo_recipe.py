"""The DPO recipe: configs, the three reference options against each other, and end to end on Ray Train
(2 CPU workers, DeepSpeed over gloo, a tiny Omni thinker, 8 pairs of real generated clips).

The preference table: chosen = the SED target, rejected = its words shuffled (tests/train/test_preference_collate).
"""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

from engine.core import storage
from engine.core.config import ConfigError, load_config
from tests.conftest import RAY_TRAIN
from tests.train.test_preference_collate import encode_pairs, write_preference_table
from train.core.config import LoraConfig, ModelConfig
from train.core.losses import AvemConfig
from train.core.modeling import apply_lora, load_thinker
from train.data.preference_collate import AVEM_LAYOUT, collate_preference, split_rows
from train.data.reference import (
    ModelReference,
    ReferenceScorer,
    add_fused_logps,
    attach_reference_logps,
    batch_logps,
    reference_column,
)
from train.recipes.dpo import count_pairs, run
from train.recipes.dpo_config import DpoConfig

LN2 = math.log(2)
REQUIRED = ["model.path=/sft/final", "data.preferences=/prefs", "storage_path=/runs"]


# ---------------------------------------------------------------- configs
def test_production_configs_carry_the_papers_hyper_parameters():
    dpo = load_config(DpoConfig, "jobs/configs/dpo_production.yaml", REQUIRED)
    assert (dpo.loss.kind, dpo.loss.beta, dpo.optim.epochs, dpo.optim.global_batch, dpo.optim.lr) == (
        "dpo", 0.1, 1, 64, 1e-5)
    assert dpo.grad_accum == 8 and dpo.reference_path == "/sft/final"
    avem = load_config(DpoConfig, "jobs/configs/avem_production.yaml", REQUIRED)
    assert avem.loss.avem() == AvemConfig(beta=0.1, beta_vr=0.5, beta_er=0.5, lambda_av=1.0, gamma_tpd=0.2)
    assert (avem.optim.lr, avem.optim.epochs, avem.optim.global_batch, avem.lora.enabled, avem.lora.r) == (
        5e-7, 1, 64, True, 8)
    assert avem.optim.micro_batch * avem.distributed.num_workers * avem.grad_accum == 64
    assert load_config(DpoConfig, "jobs/configs/dpo_demo.yaml", ["storage_path=/runs"]).loss.kind == "dpo"


def test_type_defaults_are_ca_dpos_and_avems():
    config = DpoConfig.model_validate({"model": {"path": "m"}, "data": {"preferences": "p"}, "storage_path": "s"})
    assert (config.optim.lr, config.optim.epochs, config.optim.global_batch, config.loss.beta) == (1e-5, 1, 64, 0.1)
    assert config.loss.avem() == AvemConfig()


def test_config_errors_are_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config(DpoConfig, None, ["reference.mode=adapters_off", "loss.kind=avem", "loss.beta_vr=0.7",
                                      "data.sed=/sed", "distributed.num_workers=3", "fused_logps=true"])
    message = str(err.value)
    for needle in ("model.path: missing", "data.preferences: missing", "storage_path: missing", "data.sed",
                   "global_batch (64) must be a multiple", "lora.enabled=true", "beta_vr + beta_er must be 1",
                   "fused_logps: needs distributed.zero_stage=2"):
        assert needle in message, needle


# ---------------------------------------------------------------- the reference options agree
@pytest.fixture(scope="module")
def processor(tiny_omni):
    return AutoProcessor.from_pretrained(tiny_omni)


@pytest.fixture(scope="module")
def pairs(processor):
    return encode_pairs(processor)


@pytest.fixture(scope="module")
def preference_table(sed_records, tmp_path_factory):
    return write_preference_table(sed_records, tmp_path_factory.mktemp("prefs") / "preferences")


@pytest.fixture(scope="module")
def base_model(tiny_omni, one_torch_thread):
    return load_thinker(ModelConfig(dtype="float32"), str(tiny_omni)).eval()


@torch.no_grad()
def test_reference_options_give_the_same_log_probs(tiny_omni, base_model, pairs, processor):
    """Frozen copy, precompute actor and adapters-off LoRA policy: the same numbers for every AVEm row kind, and
    the policy's own forward (step 1: policy == reference) gives them too."""
    pad = processor.tokenizer.pad_token_id
    batch = {**pairs, "pair_id": np.array(["p0", "p1"])}
    inputs = collate_preference(batch, AVEM_LAYOUT.blocks, pad)
    frozen = ModelReference(base_model, AVEM_LAYOUT, pad, "cpu")(batch, inputs)
    scored = ReferenceScorer(str(tiny_omni), ModelConfig(dtype="float32"), "avem", pad)(batch)
    assert list(scored["pair_id"]) == ["p0", "p1"]
    peft = apply_lora(load_thinker(ModelConfig(dtype="float32"), str(tiny_omni)), LoraConfig(enabled=True, r=4))
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # a trained adapter, so that "adapters on" really differs
            torch.nn.init.normal_(param, std=0.5)
    adapters_off = ModelReference(peft, AVEM_LAYOUT, pad, "cpu", context=peft.disable_adapter)(batch, inputs)
    adapters_on = split_rows(batch_logps(peft.eval(), inputs), AVEM_LAYOUT.blocks)
    policy = split_rows(batch_logps(base_model, inputs), AVEM_LAYOUT.blocks)
    assert set(frozen) == set(AVEM_LAYOUT.names) == {"chosen", "vr", "er", "chosen_swapped", "text_chosen",
                                                     "text_vr", "text_er"}
    for name, values in frozen.items():
        assert scored[reference_column(name)].tolist() == pytest.approx(values.tolist(), abs=1e-4), name
        assert adapters_off[name].tolist() == pytest.approx(values.tolist(), abs=1e-4), name
    for name, values in policy.items():
        assert values.tolist() == pytest.approx(frozen[name].tolist(), abs=1e-4), name
        assert not np.allclose(adapters_on[name].numpy(), values.numpy(), atol=1e-2), name
    # Text only (no media) is a different conditional from the same response with media.
    assert not np.allclose(frozen["text_chosen"].numpy(), frozen["chosen"].numpy(), atol=1e-2)


def test_fused_log_probs_equal_the_logits_path(tiny_omni, base_model, pairs, processor):
    """TRL's fused LM head on the thinker (also behind PEFT): the same log-probs and the same gradients."""
    inputs = collate_preference(pairs, AVEM_LAYOUT.blocks, processor.tokenizer.pad_token_id)
    grads = []
    for fused in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation for both
        model = apply_lora(load_thinker(ModelConfig(dtype="float32"), str(tiny_omni)), LoraConfig(enabled=True, r=4))
        if fused:
            add_fused_logps(model)
        logps = batch_logps(model, inputs, fused=fused)
        (logps * torch.linspace(-1, 1, len(logps))).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if not fused:
            plain = logps.detach()
    assert logps.tolist() == pytest.approx(plain.tolist(), abs=1e-4)
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_precomputed_columns_attach_by_pair_id():
    batch = {"pair_id": np.array(["b", "a"]), "prompt_ids": np.array([1, 2])}
    lookup = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    out = attach_reference_logps(batch, lookup, ["ref_chosen_logp", "ref_rejected_logp"])
    assert out["ref_chosen_logp"].tolist() == [3.0, 1.0] and out["ref_rejected_logp"].tolist() == [4.0, 2.0]
    with pytest.raises(KeyError, match="reference_logps.parquet"):
        attach_reference_logps({"pair_id": np.array(["c"])}, lookup, ["ref_chosen_logp", "ref_rejected_logp"])


class _StreamedDataset:
    """Stands in for a streamed (not materialized) Ray Dataset, whose count() runs the whole encoding."""

    def count(self) -> int:
        raise AssertionError("count() would encode the preference table once more")


def test_a_streamed_runs_pair_count_comes_from_the_saved_reference_log_probs(tmp_path):
    """GPU runs stream the encoded pairs; with a precomputed reference the count is the saved table's row count (its
    Parquet footer), one row per pair that survived encoding. Without one, only encoding can tell."""
    pq.write_table(pa.table({"pair_id": ["p0", "p1", "p2"], "ref_chosen_logp": [-1.0, -2.0, -3.0]}),
                   tmp_path / "reference_logps.parquet")
    precomputed = load_config(DpoConfig, "jobs/configs/dpo_demo.yaml", ["storage_path=/runs",
                                                                        "reference.mode=precomputed"])
    assert count_pairs(precomputed, _StreamedDataset(), str(tmp_path)) == 3
    frozen = load_config(DpoConfig, "jobs/configs/dpo_demo.yaml", ["storage_path=/runs", "reference.mode=model"])
    with pytest.raises(AssertionError, match="encode the preference table"):
        count_pairs(frozen, _StreamedDataset(), str(tmp_path))


# ---------------------------------------------------------------- end to end on Ray Train
def _config(tiny_omni, table, storage_path, *overrides):
    return load_config(DpoConfig, "jobs/configs/dpo_demo.yaml", [
        f"model.path={tiny_omni}", f"data.preferences={table}", f"storage_path={storage_path}", "data.max_frames=4",
        "optim.global_batch=2", "optim.lr=1e-3", "optim.epochs=3", "report_every=20", *overrides])


def _metrics(run_dir):
    text = storage.filesystem(run_dir).cat_file(f"{storage.strip_protocol(run_dir)}/metrics.jsonl").decode()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
@RAY_TRAIN
def test_ca_dpo_raises_the_margin_resumes_from_s3_and_both_references_agree(local_ray_on_moto_s3, tiny_omni,
                                                                          preference_table, tmp_path):
    # Precomputed reference, ZeRO-2 full fine-tuning, stopped after 4 steps and restarted to 8 (3 epochs of 8 pairs);
    # checkpoints, the reference log-probs and metrics on S3, so the restart restores all of them from there.
    # The first run encodes and scores the reference in Ray Data actor pools, the others in the driver (a small CPU
    # run, train.data.runtime): the losses below agree across them.
    common = ["distributed.zero_stage=2", "checkpoint_every=4"]
    first = run(_config(tiny_omni, preference_table, "s3://saber-test/runs", "name=pre", "reference.mode=precomputed",
                        "optim.max_steps=4", "data.driver_max_rows=0", *common))
    assert first["pairs"] == 8 and [r["step"] for r in _metrics(first["run_dir"])] == [1, 2, 3, 4]
    second = run(_config(tiny_omni, preference_table, "s3://saber-test/runs", "name=pre", "reference.mode=precomputed",
                         "optim.max_steps=8", *common))
    assert second["checkpoint"].startswith("s3://saber-test/runs/pre/checkpoint_")
    rows = _metrics(second["run_dir"])
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["resumed_from_step"] for r in rows] == [0] * 4 + [4] * 4
    # Step 1: policy == reference, so every implicit reward is 0 and the loss is ln 2.
    assert rows[0]["loss"] == pytest.approx(LN2, abs=1e-5) and abs(rows[0]["margin"]) < 1e-4
    assert rows[4]["loss"] < LN2 - 0.01  # a restart from scratch would be back at ln 2
    margins, accuracy = [r["margin"] for r in rows], [r["accuracy"] for r in rows]
    assert np.mean(margins[-4:]) > max(0.0, np.mean(margins[:4])) and np.mean(accuracy[-4:]) > np.mean(accuracy[:4])
    fs = storage.filesystem("s3://saber-test")
    assert fs.exists("saber-test/runs/pre/reference_logps.parquet") and fs.exists("saber-test/runs/pre/loss.png")
    fs.get("saber-test/runs/pre/final/", str(tmp_path / "pre_final"), recursive=True)
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tmp_path / "pre_final")
    base = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_omni)
    assert any(not torch.equal(p, base.state_dict()[n]) for n, p in model.named_parameters())

    # A frozen reference on each worker (ZeRO-3: sharded in its own engine), uninterrupted: the same run.
    straight = _metrics(run(_config(tiny_omni, preference_table, tmp_path, "name=frozen", "reference.mode=model",
                                    "distributed.zero_stage=3", "optim.max_steps=8", "checkpoint_every=8"))["run_dir"])
    assert straight[0]["loss"] == pytest.approx(LN2, abs=1e-5)
    np.testing.assert_allclose([r["loss"] for r in straight], [r["loss"] for r in rows], rtol=1e-3, atol=1e-5)
    print(f"ca-dpo margins {np.round(margins, 4).tolist()} accuracy {np.round(accuracy, 3).tolist()}; "
          f"step-1 loss {rows[0]['loss']:.7f} (precomputed) {straight[0]['loss']:.7f} (model); "
          f"frozen-ref losses {np.round([r['loss'] for r in straight], 5).tolist()}")


@pytest.mark.slow
@RAY_TRAIN
def test_avem_dpo_trains_with_every_term(local_ray, tiny_omni, preference_table, tmp_path):
    summary = run(_config(tiny_omni, preference_table, tmp_path, "name=avem", "loss.kind=avem", "lora.enabled=true",
                          "lora.r=8", "reference.mode=adapters_off", "distributed.zero_stage=2", "optim.max_steps=3",
                          "checkpoint_every=3", "optim.lr=2e-2", "fused_logps=true",
                          "distributed.num_workers=1"))  # no sharding claimed here (see the CA-DPO test above)
    rows = _metrics(summary["run_dir"])
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "erp_tpd", "pmp", "margin", "accuracy", "chosen_reward", "rejected_reward",
                *(f"policy_{n}_logp" for n in ("chosen", "vr", "er", "chosen_swapped")),
                *(f"ref_{n}_logp" for n in AVEM_LAYOUT.names)):
        assert all(math.isfinite(r[key]) for r in rows), key
    for r in rows:
        assert r["loss"] == pytest.approx(r["erp_tpd"] + 1.0 * r["pmp"], abs=1e-5)
    assert rows[0]["pmp"] == pytest.approx(LN2, abs=1e-5)  # policy == reference on both inputs at step 1
    assert rows[0]["erp_tpd"] != pytest.approx(LN2, abs=1e-3)  # TPD shifts it by the text prior's gap
    assert rows[-1]["pmp"] != pytest.approx(LN2, abs=1e-4)  # the swapped-input term trains too
    # LoRA merged on save (the SFT recipe's save_final): a plain thinker that differs from the base in the LM
    # layers only.
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(summary["final_model"])
    assert not any("lora" in n for n in model.state_dict())
    base = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_omni).state_dict()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, base[n])}
    assert changed and all("language_model.layers" in n for n in changed)
    print("avem rows", [{k: round(r[k], 4) for k in ("loss", "erp_tpd", "pmp", "margin", "accuracy")} for r in rows])
