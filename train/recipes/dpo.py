"""Preference optimisation of the SED-tuned Qwen2.5-Omni thinker: CA-DPO (SABER-LLM Eq. 3) or AVEm-DPO (Eq. 9),
on Ray Train TorchTrainer + DeepSpeed ZeRO-2/3, exactly like the SFT recipe (whose engine, resume, checkpoint and
final-save functions this module reuses).

`run(config)` is the driver: encode the preference table in a Ray Data actor pool (`train.data.preference_data`),
optionally add the reference log-probs in a second pass (`train.data.reference`), fit, plot. `train_loop_per_worker`
runs on each worker: the policy engine, the reference (`reference.mode`), then `train_step` per micro-batch.

A micro-batch of B pairs is one policy forward over all its rows ([chosen; rejected], or AVEm's [chosen; y_vr;
y_er; chosen on the swapped clip]: `train.data.preference_collate`), one reference forward over the same rows (plus the
text-only rows for AVEm's TPD) unless precomputed, then the loss from `train.core.losses`. Metrics per optimizer step go
to RUN/metrics.jsonl (loss, margin, accuracy, chosen/rejected rewards, each loss term, mean policy and reference
log-probs per row kind, lr, throughput) and at the end to RUN/loss.png.

TRL (1.16): its DPOTrainer is not used, for these reasons:
- `DPOTrainer` is a transformers `Trainer`: it owns the loop, the optimizer and its DeepSpeed set-up (through
  accelerate) and wants a 🤗 `datasets` dataset; here Ray Train owns the workers, each one a DeepSpeed engine fed
  from a streamed Ray Data shard, with checkpoints reported to Ray.
- Its multimodal path (`DataCollatorForVisionPreference`) knows images only: it runs the processor inside the
  collator on `images` (no `videos`, no `audio`) for every batch, whereas a Qwen2.5-Omni pair needs the clip's
  video AND audio features, encoded once in preprocessing and repeated for the chosen and rejected rows.
- `precompute_ref_log_probs=True` raises for vision datasets and for iterable (streamed) datasets.
- AVEm-DPO (two weighted rejections, the swapped-input preference, text-prior debiasing) has no TRL loss; its
  sigmoid loss lives inside `DPOTrainer._compute_loss` (`train.core.losses.dpo_loss` is the same formula, tested by
  hand).
- `DataCollatorForPreference` takes one prompt and two responses per example and no media; AVEm needs four media
  rows per pair (one with a different prompt: the swapped clip's placeholder counts differ) plus three text rows.
Used: `trl.trainer.utils.add_fused_lm_head` (`fused_logps=true`, ZeRO-2), which scores the response tokens in
chunks instead of materialising [rows, T, vocab] logits; it works on the Qwen2.5-Omni thinker as is (checked equal
to the logits path, values and gradients). Shared ideas, not code: the row layout (chosen block then rejected
block, as `DataCollatorForPreference`), "adapters disabled = reference" for LoRA (TRL's `use_adapter(model, None)`;
here peft's `disable_adapter`) and, under ZeRO-3, a reference in its own optimizer-less ZeRO-3 engine as TRL's
`prepare_deepspeed` does (that function needs an accelerate `Accelerator`, so it is not called).
"""

from __future__ import annotations

import logging
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from engine.core import storage
from engine.core.config_base import dump_config
from train.core.ds_config import resolve_zero_stage
from train.core.losses import AvemInputs, PreferenceLoss, avem_loss, dpo_loss
from train.core.metrics import MetricsLog
from train.core.modeling import resolve_model_path
from train.data import runtime
from train.data.preference_collate import LAYOUTS, collate_preference, split_rows
from train.data.reference import CACHE_FILE as REFERENCE_FILE
from train.data.reference import add_fused_logps, batch_logps, load_reference, precompute_reference_logps, to_device
from train.recipes.dpo_config import DpoConfig, PreferenceLossConfig
from train.recipes.sft import (
    TrainState,
    checkpoint_uri,
    micro_batches,
    open_feed,
    report_step,
    restore,
    run_config,
    save_final,
    setup_engine,
)

log = logging.getLogger(__name__)
TITLES = {"dpo": "CA-DPO", "avem": "AVEm-DPO"}


# -- worker side ------------------------------------------------------------------------------------------
def preference_loss(config: PreferenceLossConfig, policy: dict[str, torch.Tensor],
                    ref: dict[str, torch.Tensor]) -> PreferenceLoss:
    """The configured loss from per-row-kind [B] log-probs (`policy` has gradients, `ref` does not)."""
    if config.kind == "dpo":
        return dpo_loss(policy["chosen"], policy["rejected"], ref["chosen"], ref["rejected"], beta=config.beta)
    return avem_loss(AvemInputs(
        policy_chosen=policy["chosen"], policy_vr=policy["vr"], policy_er=policy["er"],
        ref_chosen=ref["chosen"], ref_vr=ref["vr"], ref_er=ref["er"],
        policy_chosen_swapped=policy["chosen_swapped"], ref_chosen_swapped=ref["chosen_swapped"],
        text_chosen=ref["text_chosen"], text_vr=ref["text_vr"], text_er=ref["text_er"]), config.avem())


def train_step(engine: Any, reference: Any, batch: dict[str, Any], config: DpoConfig,
               pad_token_id: int) -> tuple[dict[str, float], int]:
    """One micro-batch: policy forward over every row, reference log-probs, loss, backward, DeepSpeed step
    (the optimizer runs only at the accumulation boundary). Returns the numbers to log and the tokens seen."""
    blocks = LAYOUTS[config.loss.kind].blocks
    inputs = to_device(collate_preference(batch, blocks, pad_token_id), engine.device)
    policy = split_rows(batch_logps(engine, inputs, config.fused_logps), blocks)
    ref = to_device(reference(batch, inputs), engine.device)
    out = preference_loss(config.loss, policy, ref)
    engine.backward(out.loss)
    engine.step()
    values = {"loss": out.loss, "margin": out.margin, "accuracy": out.accuracy, "chosen_reward": out.chosen_reward,
              "rejected_reward": out.rejected_reward, **out.terms,
              **{f"policy_{name}_logp": logps.mean() for name, logps in policy.items()},
              **{f"ref_{name}_logp": logps.mean() for name, logps in ref.items()}}
    return {key: float(value.detach()) for key, value in values.items()}, int(inputs["attention_mask"].sum())


@dataclass
class StepWindow:
    """The micro-batches of one optimizer step."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    micro: int = 0
    tokens: int = 0

    def add(self, values: dict[str, float], tokens: int) -> None:
        for key, value in values.items():
            self.values[key].append(value)
        self.micro += 1
        self.tokens += tokens


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config = DpoConfig.model_validate(loop_config["config"])
    torch.set_num_threads(loop_config["threads"])
    torch.manual_seed(config.seed)
    total_steps, pad_token_id = loop_config["total_steps"], loop_config["pad_token_id"]
    feed = open_feed(config)  # on GPU workers it reads ahead while the engines are built
    engine = setup_engine(config, loop_config["model_path"], loop_config["schedule_steps"])
    if config.fused_logps:
        add_fused_logps(engine)
    reference = load_reference(config, engine, loop_config["reference_path"], pad_token_id)
    state = restore(engine)
    started_at = state.step
    metrics_log = MetricsLog(loop_config["run_dir"]) if ray.train.get_context().get_world_rank() == 0 else None
    if metrics_log:
        metrics_log.resume(state.step)
    window, times = StepWindow(), {"data_s": 0.0, "compute_s": 0.0, "report_s": 0.0}
    step_start = mark = time.perf_counter()
    for batch in micro_batches(feed, state, config, total_steps):
        times["data_s"] += time.perf_counter() - mark
        mark = time.perf_counter()
        window.add(*train_step(engine, reference, batch, config, pad_token_id))
        times["compute_s"] += time.perf_counter() - mark
        if window.micro >= config.grad_accum:  # micro-batches counted, as in the SFT recipe
            state.step += 1
            row = step_metrics(engine, config, state, window, time.perf_counter() - step_start, times)
            row["resumed_from_step"] = started_at
            mark = time.perf_counter()
            report_step(engine, config, state, row, metrics_log, total_steps)
            window, times = StepWindow(), {"data_s": 0.0, "compute_s": 0.0, "report_s": time.perf_counter() - mark}
            step_start = time.perf_counter()
        mark = time.perf_counter()
    save_final(engine, config, loop_config)
    if metrics_log:
        metrics_log.flush()


def step_metrics(engine: Any, config: DpoConfig, state: TrainState, window: StepWindow, seconds: float,
                 times: dict[str, float]) -> dict[str, Any]:
    """Every logged value averaged over the accumulation window and the ranks (one all-reduce); throughput summed
    over the ranks; `data_s`/`compute_s` split this step's time, `report_s` is the previous step's report."""
    keys = sorted(window.values)
    local = [sum(window.values[k]) / len(window.values[k]) for k in keys] + [window.tokens / seconds]
    summed = torch.tensor(local, dtype=torch.float64)
    dist.all_reduce(summed)
    world = dist.get_world_size()
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], dtype=torch.float64)
    dist.all_reduce(rss, op=dist.ReduceOp.MAX)
    means = dict(zip(keys, (summed[:-1] / world).tolist(), strict=True))
    return {"step": state.step, "epoch": state.epoch, **means, "lr": engine.get_lr()[0],
            "tokens_per_s": float(summed[-1]), "pairs_per_s": config.optim.global_batch / seconds, "step_s": seconds,
            "peak_rss_mb": float(rss.item()), **{key: round(value, 4) for key, value in times.items()}}


# -- driver side ------------------------------------------------------------------------------------------
def run(config: DpoConfig) -> dict[str, Any]:
    """Fits on the running Ray; returns the run folder, `final_model` (save_pretrained layout, LoRA merged: the
    next round's policy and sampler), the step count and the last metrics. A run whose `name` and `storage_path`
    already hold checkpoints resumes from the latest one (Ray Train V2 restores it; see sft.restore)."""
    from transformers import AutoProcessor

    # Re-checked here: a caller deriving configs with model_copy(update=...) (e.g. a multi-round driver)
    # bypasses validation, and e.g. reference.mode=adapters_off cannot honour a reference.path of its own.
    config = DpoConfig.model_validate(config.model_dump())
    storage_path = storage.absolute(config.storage_path)
    run_dir = storage.join(storage_path, config.name)
    model_path, reference_path = _model_location(config.model.path), _model_location(config.reference_path)
    config = resolve_zero_stage(config, model_path)
    for path in {model_path, reference_path}:
        if Path(path, "mose.safetensors").exists():  # SFT with MoSE: from_pretrained alone would drop the experts
            raise ValueError(f"{path} holds MoSE experts; preference optimisation of MoSE is not supported")
    pad_token_id = AutoProcessor.from_pretrained(model_path).tokenizer.pad_token_id
    _save_config(config, run_dir)
    dataset = build_training_dataset(config, model_path, reference_path, pad_token_id, run_dir)
    pairs = count_pairs(config, dataset, run_dir)
    steps_per_epoch = max(1, pairs // config.distributed.num_workers // config.optim.micro_batch // config.grad_accum)
    schedule_steps = steps_per_epoch * config.optim.epochs  # max_steps only stops early (see the SFT recipe)
    total_steps = min(config.optim.max_steps or schedule_steps, schedule_steps)
    log.info("%s: %d pairs, %d steps (%d per epoch), reference %s", TITLES[config.loss.kind], pairs, total_steps,
             steps_per_epoch, config.reference.mode)
    trainer = _trainer(config, dataset, storage_path, {
        "config": config.model_dump(), "model_path": model_path, "reference_path": reference_path,
        "run_dir": run_dir, "total_steps": total_steps, "schedule_steps": schedule_steps,
        "pad_token_id": pad_token_id,
        "threads": max(1, int(config.distributed.cpus_per_worker)) if not config.distributed.use_gpu else 4})
    result = trainer.fit()
    metrics = MetricsLog(run_dir)
    metrics.resume(10**12)
    extra = ("erp_tpd", "pmp") if config.loss.kind == "avem" else ()
    metrics.plot(f"{TITLES[config.loss.kind]} {config.name}", keys=("loss", "margin", "accuracy", *extra))
    return {"run_dir": run_dir, "final_model": storage.join(run_dir, "final"), "total_steps": total_steps,
            "pairs": pairs, "metrics": result.metrics,
            "checkpoint": checkpoint_uri(storage_path, result.checkpoint)}


def build_training_dataset(config: DpoConfig, model_path: str, reference_path: str, pad_token_id: int,
                           run_dir: str) -> ray.data.Dataset:
    from train.data.preference_data import build_preference_dataset

    # Small (CPU) runs encode once and keep the arrays in the object store (the training workers then hold every
    # CPU, so nothing may be left to compute); cluster runs stream them.
    materialize = not config.distributed.use_gpu
    examples = build_preference_dataset(config, model_path, materialize=materialize)
    if config.reference.mode != "precomputed":
        return examples
    in_driver = runtime.in_driver(materialize, config.data.preferences, config.data.limit, config.data.driver_max_rows)
    return precompute_reference_logps(config, examples, reference_path, pad_token_id, run_dir, materialize, in_driver)


def count_pairs(config: DpoConfig, dataset: ray.data.Dataset, run_dir: str) -> int:
    """The pairs the LR schedule is sized for, without encoding the table once more just to count where that can be
    avoided. A materialized dataset (CPU runs) knows its row count from its blocks' metadata. A streamed one (GPU runs)
    with a precomputed reference: the reference log-probs saved in the run folder have one row per pair that survived
    encoding, so their Parquet footer has the count. Otherwise counting runs the whole encoding (decode and processor
    per clip) once: the preference table's own footers only bound the count from above, as encoding drops the pairs
    it cannot use (as in the SFT recipe's run)."""
    from ray.data.dataset import MaterializedDataset

    if config.reference.mode == "precomputed" and not isinstance(dataset, MaterializedDataset):
        import pyarrow.parquet as pq

        fs, path = storage.arrow_filesystem(storage.join(run_dir, REFERENCE_FILE))
        return pq.read_metadata(path, filesystem=fs).num_rows
    return dataset.count()


def _trainer(config: DpoConfig, dataset: ray.data.Dataset, storage_path: str,
             loop_config: dict[str, Any]) -> TorchTrainer:
    dist_cfg = config.distributed
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        torch_config=TorchConfig(backend=dist_cfg.backend),
        scaling_config=ScalingConfig(num_workers=dist_cfg.num_workers, use_gpu=dist_cfg.use_gpu,
                                     resources_per_worker={"CPU": dist_cfg.cpus_per_worker}),
        run_config=run_config(config, storage_path), datasets={"train": dataset})


def _model_location(path: str) -> str:
    """`tiny:DIR` built, a local folder made absolute (workers may run elsewhere), a hub id or s3:// untouched."""
    resolved = resolve_model_path(path)
    return storage.absolute(resolved) if Path(resolved).exists() else resolved


def _save_config(config: DpoConfig, run_dir: str) -> None:
    """The resolved config next to the outputs (rewritten by a resumed run, which may change max_steps)."""
    fs = storage.filesystem(run_dir)
    fs.makedirs(storage.strip_protocol(run_dir), exist_ok=True)
    fs.pipe_file(f"{storage.strip_protocol(run_dir)}/config.yaml", dump_config(config).encode())
