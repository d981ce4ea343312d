"""Reference log-probs for preference optimisation. π_ref is the frozen SFT model; three ways to get its numbers:

- `model` (`ModelReference` over `frozen_reference_model`): a second thinker on every worker, eval mode, no grad,
  never wrapped for training. With ZeRO-2 each worker holds a full copy in the model dtype (for the 7B thinker
  ~18 GB in bf16 per GPU beside the policy). With ZeRO-3 (`reference.shard_zero3`) it is wrapped in its own
  DeepSpeed ZeRO-3 engine with no optimizer: parameters partitioned over the workers (1/N each) and gathered
  layer by layer during its forward, like the policy's; the price is the same all-gather traffic again.
- `adapters_off` (`ModelReference` over the policy's PeftModel, adapters disabled): LoRA DPO on top of merged SFT
  weights; the frozen base IS the reference, so no memory at all, one more forward of the policy.
- `precomputed` (`precompute_reference_logps`): before training, a Ray Data actor pool (`ReferenceScorer`, one
  reference per actor, a GPU each on a cluster; the driver itself for a small CPU run) runs the same collation and
  forward over every pair and adds `ref_<row>_logp` columns; training workers hold no reference and read the
  columns (`PrecomputedReference`).
  The pass finishes before training starts (its actors would otherwise compete for the trainers' GPUs); only the
  small result (pair_id + a few floats) is materialised and saved as RUN/reference_logps.parquet, so a restarted
  run skips it. The large media arrays keep streaming (re-encoded for training on clusters).

Every option uses `batch_logps`, the policy's own function (same collation, same `sequence_logps`), so at step 1,
when policy == reference, the implicit rewards are 0 up to float noise and the DPO loss is ln 2.
AVEm's text-only rows (TPD) are scored by the same reference with no media inputs: its language backbone alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from train.core.config import ModelConfig
from train.core.losses import sequence_logps
from train.core.modeling import load_thinker, torch_dtype
from train.data.preference_collate import LAYOUTS, Layout, collate_preference, collate_text, split_rows

log = logging.getLogger(__name__)
CACHE_FILE = "reference_logps.parquet"


def reference_column(name: str) -> str:
    return f"ref_{name}_logp"


def batch_logps(model: Any, inputs: Mapping[str, Tensor], fused: bool = False) -> Tensor:
    """Summed log-probs of the response tokens of every row of a collated batch: [rows], float32.

    fused: `model` carries TRL's fused LM head (`add_fused_logps`), which scores the labels in chunks instead of
    returning [rows, T, vocab] logits (with a 152k vocabulary and thousands of media tokens per row, the largest
    tensor of a step by far); the numbers are the same."""
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if fused:
        out = model(**model_inputs, labels=inputs["labels"], fused_lm_head=True, use_cache=False)
        return out.log_probs.float().sum(dim=-1)  # zero wherever the label is ignored
    return sequence_logps(model(**model_inputs, use_cache=False).logits, inputs["labels"])


def add_fused_logps(model: Any) -> None:
    """Patches TRL's `add_fused_lm_head` (projection in float32) onto the thinker inside `model`: a DeepSpeed
    engine, a PeftModel or the thinker itself. ZeRO-2 only: under ZeRO-3 TRL gathers the sharded head through
    transformers' HfDeepSpeedConfig, which this recipe does not create (DpoConfig rejects the combination)."""
    from trl.trainer.utils import add_fused_lm_head

    thinker = getattr(model, "module", model)  # DeepSpeedEngine.module
    if hasattr(thinker, "get_base_model"):  # PeftModel: patch the wrapped thinker, whose forward PEFT calls
        thinker = thinker.get_base_model()
    add_fused_lm_head(thinker, cast_lm_head_to_fp32=True)


def to_device(inputs: Mapping[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    return {key: value.to(device) for key, value in inputs.items()}


class ModelReference:
    """Reference log-probs from a module run in eval mode under no_grad, optionally inside `context` (e.g. a
    PeftModel's `disable_adapter`). Returns {row name: [B]} for the layout's media rows and text-only rows."""

    def __init__(self, module: Any, layout: Layout, pad_token_id: int, device: torch.device | str,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 fused: bool = False) -> None:
        self.module, self.layout, self.pad_token_id, self.device = module, layout, pad_token_id, device
        self.context, self.fused = context, fused

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any], inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with self.context(), _eval_mode(self.module):
            out = split_rows(batch_logps(self.module, inputs, self.fused), self.layout.blocks)
            if self.layout.text_blocks:
                text = to_device(collate_text(batch, self.layout.text_blocks, self.pad_token_id), self.device)
                out |= split_rows(batch_logps(self.module, text, self.fused), self.layout.text_blocks)
        return out


class PrecomputedReference:
    """Reference log-probs read from the columns the precompute pass added."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def __call__(self, batch: Mapping[str, Any], inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: torch.as_tensor(np.asarray(batch[reference_column(name)], dtype=np.float32))
                for name in self.layout.names}


@contextlib.contextmanager
def _eval_mode(module: Any):
    """Eval for the reference forward (the adapters-off policy is in train mode), restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def frozen_reference_model(config: Any, path: str, device: torch.device | str) -> Any:
    """The frozen reference thinker (config: a DpoConfig); under ZeRO-3 + shard_zero3 a ZeRO-3 engine without
    optimizer (DeepSpeed then partitions it over the workers), else a plain module on `device`."""
    model = load_thinker(config.model.model_copy(update={"gradient_checkpointing": False}), path)
    model.requires_grad_(False).eval()
    if config.distributed.zero_stage != 3 or not config.reference.shard_zero3:
        return model.to(device)
    import deepspeed

    from train.core.ds_config import deepspeed_config

    engine, *_ = deepspeed.initialize(model=model, config=deepspeed_config(config, torch_dtype(config.model) ==
                                                                           torch.bfloat16), dist_init_required=False)
    engine.eval()
    return engine


def load_reference(config: Any, policy: Any, reference_path: str, pad_token_id: int) -> Callable:
    """The reference of `config.reference.mode` for a training worker; `policy` is its DeepSpeed engine (already
    carrying the fused head when `config.fused_logps`)."""
    layout, fused = LAYOUTS[config.loss.kind], config.fused_logps
    if config.reference.mode == "precomputed":
        return PrecomputedReference(layout)
    if config.reference.mode == "adapters_off":
        return ModelReference(policy.module, layout, pad_token_id, policy.device,
                              context=policy.module.disable_adapter, fused=fused)
    module = frozen_reference_model(config, reference_path, policy.device)
    if fused:
        add_fused_logps(module)
    return ModelReference(module, layout, pad_token_id, policy.device, fused=fused)


# -- the precompute pass (Ray Data) ------------------------------------------------------------------------------
class ReferenceScorer:
    """Loads the reference once (a Ray Data actor, or in the driver for a small CPU run); turns a batch of encoded
    pairs into pair_id + ref_<row>_logp."""

    def __init__(self, model_path: str, model: ModelConfig, kind: str, pad_token_id: int, fused: bool = False) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module = load_thinker(model.model_copy(update={"gradient_checkpointing": False}), model_path)
        module.requires_grad_(False).eval().to(self.device)
        if fused:
            add_fused_logps(module)
        self.layout = LAYOUTS[kind]
        self.reference = ModelReference(module, self.layout, pad_token_id, self.device, fused=fused)
        self.pad_token_id = pad_token_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = to_device(collate_preference(batch, self.layout.blocks, self.pad_token_id), self.device)
        logps = self.reference(batch, inputs)
        return {"pair_id": np.asarray(batch["pair_id"]),
                **{reference_column(name): values.cpu().numpy() for name, values in logps.items()}}


def precompute_reference_logps(config: Any, examples: Any, reference_path: str, pad_token_id: int, run_dir: str,
                               materialize: bool, in_driver: bool = False) -> Any:
    """`examples` (encoded pairs, a Ray Dataset) with the reference columns added; the reference pass runs now,
    or its saved result from an earlier attempt of this run is reused (same reference, table and loss).
    `materialize` as for the examples: a small run must not need a free CPU for the lookup once the training
    workers hold them all. `in_driver`: the examples were encoded in the driver (a small CPU run, train.data.runtime),
    and the reference scores them there too."""
    from train.data import runtime

    stamp = {"reference": reference_path, "preferences": config.data.preferences, "limit": str(config.data.limit),
             "kind": config.loss.kind}
    table = _load_cached(run_dir, stamp)
    if table is None:
        table = runtime.score(
            examples, ReferenceScorer,
            {"model_path": reference_path, "model": config.model, "kind": config.loss.kind,
             "pad_token_id": pad_token_id, "fused": config.fused_logps},
            batch_size=config.reference.precompute_batch, concurrency=config.reference.precompute_concurrency,
            num_gpus=1 if config.distributed.use_gpu else 0, driver=in_driver)
        _save_cached(run_dir, table, stamp)
    columns = [reference_column(name) for name in LAYOUTS[config.loss.kind].names]
    lookup = dict(zip(table.column("pair_id").to_pylist(),
                      np.stack([table.column(c).to_numpy() for c in columns], axis=1), strict=True))
    return runtime.add_columns(examples, attach_reference_logps, {"lookup": lookup, "columns": columns},
                               materialize=materialize, driver=in_driver)


def attach_reference_logps(batch: dict[str, np.ndarray], lookup: dict[str, np.ndarray],
                           columns: list[str]) -> dict[str, np.ndarray]:
    missing = [pair for pair in batch["pair_id"] if pair not in lookup]
    if missing:
        raise KeyError(f"no reference log-probs for pairs {missing[:5]}: delete {CACHE_FILE} in the run folder")
    values = np.stack([lookup[pair] for pair in batch["pair_id"]])
    return {**batch, **{column: values[:, j].astype(np.float32) for j, column in enumerate(columns)}}


def _load_cached(run_dir: str, stamp: dict[str, str]) -> Any:
    import pyarrow.parquet as pq

    from engine.core import storage

    uri = storage.join(run_dir, CACHE_FILE)
    if not storage.filesystem(uri).exists(storage.strip_protocol(uri)):
        return None
    fs, path = storage.arrow_filesystem(uri)
    table = pq.read_table(path, filesystem=fs)
    saved = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if any(saved.get(key) != value for key, value in stamp.items()):
        log.info("reference log-probs in %s are for another setup (%s); recomputing", run_dir, saved)
        return None
    log.info("reusing reference log-probs of %d pairs from %s", table.num_rows, run_dir)
    return table


def _save_cached(run_dir: str, table: Any, stamp: dict[str, str]) -> None:
    import pyarrow.parquet as pq

    from engine.core import storage

    storage.filesystem(run_dir).makedirs(storage.strip_protocol(run_dir), exist_ok=True)
    fs, path = storage.arrow_filesystem(storage.join(run_dir, CACHE_FILE))
    pq.write_table(table.replace_schema_metadata(stamp), path, filesystem=fs)
