"""SED supervised fine-tuning of the Qwen2.5-Omni thinker: Ray Train TorchTrainer + DeepSpeed ZeRO-2/3.

`run(config)` is the driver side (dataset, trainer, resume, plot); `train_loop_per_worker` runs on each
worker: setup, then `train_step` per micro-batch, checkpoints every N optimizer steps, the final model
saved with save_pretrained so sampling and evaluation load it like any checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from engine.core import storage
from engine.ops import monitoring
from train.core.config import SftConfig
from train.core.ds_config import deepspeed_config, resolve_zero_stage
from train.core.metrics import MetricsLog
from train.core.modeling import apply_lora, count_parameters, load_thinker, resolve_model_path, torch_dtype
from train.data.collate import collate_sed
from train.data.feed import BatchFeed, TrainState

log = logging.getLogger(__name__)
STATE_FILE = "train_state.json"


# -- worker side ------------------------------------------------------------------------------------------
def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def setup_engine(config: SftConfig, model_path: str, total_steps: int) -> Any:
    import deepspeed

    model = load_thinker(config.model, model_path)
    if config.lora.enabled:
        model = apply_lora(model, config.lora)
    if config.mose.enabled:
        from train.mosear import attach_mose

        attach_mose(model, config.mose)  # freezes everything but the experts and their gates
    trainable, total = count_parameters(model)
    log.info("parameters: %d trainable of %d", trainable, total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    warmup = max(1, int(total_steps * config.optim.warmup_ratio))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total_steps))
    bf16 = torch_dtype(config.model) == torch.bfloat16
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(config, bf16), dist_init_required=False)
    return engine


def train_step(engine: Any, batch: dict[str, torch.Tensor]) -> float:
    """One micro-batch: forward (loss on the target tokens only, via the masked labels), backward, and a
    DeepSpeed step (which applies the optimizer only at the gradient-accumulation boundary)."""
    batch = {k: v.to(engine.device) for k, v in batch.items()}
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def restore(engine: Any) -> TrainState:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as folder:
        engine.load_checkpoint(os.path.join(folder, "deepspeed"))
        state = TrainState(**json.loads(Path(folder, STATE_FILE).read_text()))
    log.info("resumed at step %d (epoch %d, micro-batch %d)", state.step, state.epoch, state.micro_in_epoch)
    return state


def save_checkpoint(engine: Any, state: TrainState, metrics: dict[str, Any]) -> None:
    """Every rank writes its DeepSpeed shards; Ray Train merges the ranks' folders into one checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(os.path.join(folder, "deepspeed"), tag=f"step_{state.step}")
        if ray.train.get_context().get_world_rank() == 0:
            Path(folder, STATE_FILE).write_text(json.dumps(asdict(state)))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _max_over_ranks(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def _mean_over_ranks(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def _all_ranks(flag: bool) -> bool:
    """True when `flag` is true on every rank."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def open_feed(config: SftConfig) -> BatchFeed:
    """The worker's shard, read ahead in a background thread (train.data.feed), kept in memory after the first epoch
    when it fits. On GPU workers reading starts now, before the engine is built, so the first batch is ready when
    training starts. On CPU workers it starts with the first step: there the read and the engine's set-up share the
    worker's one core, and reading early made the SIGKILL SFT test slower (157 s against 139 s, four runs)."""
    data = config.data
    feed = BatchFeed(ray.train.get_dataset_shard("train"), config.optim.micro_batch, data.cache_shard_mb << 20,
                     data.prefetch_batches, agree=_all_ranks)
    return feed.start() if config.distributed.use_gpu else feed


def micro_batches(feed: BatchFeed, state: TrainState, config: SftConfig, total_steps: int) -> Iterator[dict]:
    """Micro-batches across epochs from the data position in `state` (a resumed run's) on, `state` following them."""
    return feed.micro_batches(state, config.optim.epochs, total_steps, config.grad_accum)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config = SftConfig.model_validate(loop_config["config"])
    torch.set_num_threads(loop_config["threads"])
    torch.manual_seed(config.seed)
    total_steps = loop_config["total_steps"]
    feed = open_feed(config)
    engine = setup_engine(config, loop_config["model_path"], loop_config["schedule_steps"])
    state = restore(engine)
    started_at = state.step
    metrics_log = MetricsLog(loop_config["run_dir"]) if ray.train.get_context().get_world_rank() == 0 else None
    if metrics_log:
        metrics_log.resume(state.step)
    losses: list[float] = []
    times = {"data_s": 0.0, "compute_s": 0.0, "report_s": 0.0}
    tokens, step_start = 0, time.perf_counter()
    mark = step_start
    for batch in micro_batches(feed, state, config, total_steps):
        times["data_s"] += time.perf_counter() - mark
        mark = time.perf_counter()
        losses.append(train_step(engine, collate_sed(batch, loop_config["pad_token_id"])))
        tokens += int(sum(len(ids) for ids in batch["input_ids"]))
        times["compute_s"] += time.perf_counter() - mark
        # Counting micro-batches, not engine.is_gradient_accumulation_boundary(): after engine.step() that
        # flag already describes the next micro-batch.
        if len(losses) >= config.grad_accum:
            state.step += 1
            row = step_metrics(engine, config, state, losses, tokens, time.perf_counter() - step_start, times)
            row["resumed_from_step"] = started_at
            mark = time.perf_counter()
            report_step(engine, config, state, row, metrics_log, total_steps)
            times = {"data_s": 0.0, "compute_s": 0.0, "report_s": time.perf_counter() - mark}
            losses, tokens, step_start = [], 0, time.perf_counter()
        mark = time.perf_counter()
    save_final(engine, config, loop_config)
    if metrics_log:
        metrics_log.flush()


def step_metrics(engine: Any, config: SftConfig, state: TrainState, losses: list[float], tokens: int,
                 seconds: float, times: dict[str, float]) -> dict[str, Any]:
    """Loss averaged over the accumulation window and the ranks; throughput summed over the ranks.
    `data_s`/`compute_s` split this step's time; `report_s` is the previous step's report (and checkpoint)."""
    world = dist.get_world_size()
    return {"step": state.step, "epoch": state.epoch, "loss": _mean_over_ranks(sum(losses) / len(losses)),
            "lr": engine.get_lr()[0], "tokens_per_s": _mean_over_ranks(tokens / seconds) * world,
            "samples_per_s": config.optim.global_batch / seconds, "step_s": seconds,
            "peak_rss_mb": _max_over_ranks(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **{key: round(value, 4) for key, value in times.items()}}


def report_step(engine: Any, config: SftConfig, state: TrainState, row: dict[str, Any],
                metrics_log: MetricsLog | None, total_steps: int) -> None:
    """Every step reaches metrics.jsonl, every `report_every` steps Ray (the dashboard); every
    `checkpoint_every` steps and the last one carry a checkpoint."""
    if metrics_log:
        metrics_log.append(row)
        monitoring.record_train_step(config.name, row)  # the dashboard's Prometheus metrics (rank 0)
    if state.step % config.checkpoint_every == 0 or state.step >= total_steps:
        if metrics_log:  # the log on disk must cover the checkpoint: a restart resumes both from here
            metrics_log.flush()
        save_checkpoint(engine, state, row)
    elif state.step % config.report_every == 0:  # the same steps on every rank, as V2's barrier needs
        ray.train.report(row)


def save_final(engine: Any, config: SftConfig, loop_config: dict[str, Any]) -> None:
    """Full weights (LoRA merged) in save_pretrained layout + the processor, under RUN/final."""
    if config.distributed.zero_stage == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
    else:
        state_dict = engine.module.state_dict()
    if ray.train.get_context().get_world_rank() != 0:
        return
    from transformers import AutoProcessor

    model = load_thinker(config.model.model_copy(update={"gradient_checkpointing": False}), loop_config["model_path"])
    if config.lora.enabled:
        model = apply_lora(model, config.lora)
    if config.mose.enabled:
        from train.mosear import attach_mose

        attach_mose(model, config.mose)
    model.load_state_dict(state_dict)
    if config.lora.enabled:
        model = model.merge_and_unload()
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, folder, config)
        AutoProcessor.from_pretrained(loop_config["model_path"]).save_pretrained(folder)
        fs = storage.filesystem(loop_config["run_dir"])
        target = f"{storage.strip_protocol(loop_config['run_dir'])}/final"
        fs.put(folder + "/", target, recursive=True)


def save_model(model: torch.nn.Module, folder: str, config: SftConfig) -> None:
    """save_pretrained layout; with MoSE the base weights (unchanged) without the experts, which go beside them
    in mose.safetensors, so the folder loads as a plain thinker and train.inference.generation attaches the experts."""
    if not config.mose.enabled:
        model.save_pretrained(folder)
        return
    from train.mosear import save_mose

    base = {name: value for name, value in model.state_dict().items() if ".mose." not in name}
    model.save_pretrained(folder, state_dict=base)
    save_mose(model, folder)


# -- driver side ------------------------------------------------------------------------------------------
def run(config: SftConfig) -> dict[str, Any]:
    """Fits on the running Ray. A run whose `name` and `storage_path` already hold checkpoints resumes from the
    latest one: Ray Train V2 restores it (its checkpoint_manager_snapshot.json) and the workers read it back
    through ray.train.get_checkpoint() (see `restore`). A worker group that fails (a worker killed, a node lost)
    is restarted from the latest checkpoint the same way, up to distributed.max_failures times; metrics.jsonl drops
    the rows past that checkpoint, which the restarted workers redo."""
    from transformers import AutoProcessor

    storage_path = storage.absolute(config.storage_path)
    run_dir = storage.join(storage_path, config.name)
    model_path = resolve_model_path(config.model.path)
    config = resolve_zero_stage(config, model_path)
    tokenizer = AutoProcessor.from_pretrained(model_path).tokenizer
    dataset = build_sed_examples(config, model_path)
    # Materialized (CPU runs), the count comes from the blocks' metadata and nothing runs. Streamed (GPU runs), it runs
    # the whole preprocessing once, and must: the records' Parquet footers would give a count for free, but
    # preprocessing drops the records it cannot use (undecodable media, a missing track, over data.max_length), so
    # they only bound it from above, and a schedule sized on them would end short of its last step and checkpoint.
    per_worker = dataset.count() // config.distributed.num_workers
    steps_per_epoch = max(1, per_worker // config.optim.micro_batch // config.grad_accum)
    # The LR schedule spans the epochs; max_steps only stops early, so a run stopped and restarted with a
    # larger max_steps follows the same schedule as one that ran straight through.
    schedule_steps = steps_per_epoch * config.optim.epochs
    total_steps = min(config.optim.max_steps or schedule_steps, schedule_steps)
    dist_cfg = config.distributed
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(), "model_path": model_path, "run_dir": run_dir,
                           "total_steps": total_steps, "schedule_steps": schedule_steps,
                           "pad_token_id": tokenizer.pad_token_id,
                           "threads": max(1, int(dist_cfg.cpus_per_worker)) if not dist_cfg.use_gpu else 4},
        torch_config=TorchConfig(backend=dist_cfg.backend),
        scaling_config=ScalingConfig(num_workers=dist_cfg.num_workers, use_gpu=dist_cfg.use_gpu,
                                     resources_per_worker={"CPU": dist_cfg.cpus_per_worker}),
        run_config=run_config(config, storage_path),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    metrics = MetricsLog(run_dir)
    metrics.resume(10**12)
    metrics.plot(f"SED-SFT {config.name}")
    return {"run_dir": run_dir, "final_model": storage.join(run_dir, "final"), "total_steps": total_steps,
            "metrics": result.metrics, "checkpoint": checkpoint_uri(storage_path, result.checkpoint)}


def build_sed_examples(config: SftConfig, model_path: str) -> ray.data.Dataset:
    from train.data.sed_data import build_sed_dataset

    # Small runs preprocess once and keep the tensors in the object store; cluster runs stream them.
    return build_sed_dataset(config, model_path, materialize=not config.distributed.use_gpu)


def checkpoint_uri(storage_path: str, checkpoint: Checkpoint | None) -> str | None:
    """A checkpoint's location as a URI (Ray Train reports remote ones without their protocol)."""
    return storage.as_uri(storage_path, checkpoint.path) if checkpoint else None


def run_config(config: SftConfig, storage_path: str) -> RunConfig:
    """Where Ray Train keeps the run (checkpoints and its checkpoint index, the restart point of a failed worker group
    and of a rerun) and how many worker-group failures it restarts from the latest checkpoint. Remote storage goes
    through engine.core.storage's filesystem (its endpoint and credentials); alongside a filesystem of its own Ray Train
    takes the path without the protocol."""
    remote = storage.is_remote(storage_path)
    return RunConfig(name=config.name, storage_path=storage.strip_protocol(storage_path) if remote else storage_path,
                     storage_filesystem=storage.arrow_filesystem(storage_path)[0] if remote else None,
                     failure_config=FailureConfig(max_failures=config.distributed.max_failures),
                     checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints))
