"""The CA-DPO preference build: select -> sample K -> judge -> rank/pair (-> AVEm writer) -> Parquet.

`run(config)` is called by jobs/build_preferences.py inside a Ray driver. The queries stream through one Ray
Data plan (the sampler and each model stage in their own actor pool); the driver writes, per batch of
finished queries, `OUTPUT/preferences/part-R-N.parquet` (the pairs) and then `OUTPUT/queries/part-R-N.parquet`
(the ledger, one row per query, paired or dropped). Each file appears whole or not at all, and the ledger
part is written second, so it is the commit: a rerun skips every query in a readable ledger part of this
round, and first removes preference parts whose ledger part never appeared (a run killed in between).
Judge and writer answers are also cached under OUTPUT/cache/, so a redone batch never pays twice.
At the end `summary.json` and `scores.png` are rebuilt from the whole ledger and table.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections import Counter
from functools import partial
from typing import Any

import matplotlib
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

matplotlib.use("Agg")  # headless: drivers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

from engine.core import storage  # noqa: E402
from engine.core.config import dump_config  # noqa: E402
from engine.core.failures import GAVE_UP, RETRYABLE  # noqa: E402
from engine.dataset.ledger import settle  # noqa: E402
from engine.dataset.pipeline import pool_map, table_blocks  # noqa: E402
from engine.dataset.writer import PART_PREFIX, QUARANTINE_DIR, read_parts, set_aside, write_parquet_whole  # noqa: E402
from train.core.modeling import resolve_model_path  # noqa: E402
from train.preferences.avem_data import AvemBatch, assign_swaps, writer_stage  # noqa: E402
from train.preferences.config import PreferenceConfig  # noqa: E402
from train.preferences.judge import JudgeBatch, judge_stage  # noqa: E402
from train.preferences.rank import preference_table, rank_batch  # noqa: E402
from train.preferences.sample import SampleBatch  # noqa: E402
from train.preferences.schema import LEDGER_SCHEMA, PAIRS_DIR, QUERY_SCHEMA, read_preferences  # noqa: E402
from train.preferences.select import load_engine_tables, select_queries  # noqa: E402
from train.preferences.vllm_sampling import (  # noqa: E402
    SampleCollector,
    attach_media,
    expand_samples,
    processor_config,
    sample_request,
    sample_result,
)

log = logging.getLogger(__name__)
LEDGER_DIR = "queries"
SCORE_BINS = 21  # totals are sums of two 0-10 integers


# -- the plan ------------------------------------------------------------------------------------------------
def _identity(row: dict[str, Any]) -> dict[str, Any]:
    return row


def add_vllm_sampler(ds: ray.data.Dataset, config: PreferenceConfig, model_path: str,
                     processor: Any = None) -> ray.data.Dataset:
    """Decode once per query, fan out K sample rows, vLLM, then gather the K answers back per query (streamed).
    `processor` replaces ray.data.llm's (a stand-in engine, to run this glue where vLLM is not installed)."""
    if processor is None:
        from ray.data.llm import build_processor

        processor = build_processor(processor_config(config.vllm, model_path, config.data),
                                    preprocess=partial(sample_request, sampling=config.sampling),
                                    postprocess=_identity)  # error rows skip postprocess: both mapped below
    ds = ds.map(partial(attach_media, data=config.data, quality=config.vllm.jpeg_quality))
    ds = processor(ds.flat_map(partial(expand_samples, sampling=config.sampling)))
    ds = ds.map(partial(sample_result, query_columns=QUERY_SCHEMA.names))
    # One collector actor, a sliver of a CPU: pure Python bookkeeping that streams (see SampleCollector).
    return ds.map_batches(SampleCollector, fn_constructor_kwargs={
        "schema": QUERY_SCHEMA, "sampler": model_path, "num_samples": config.sampling.num_samples},
        batch_format="pyarrow", concurrency=1, num_cpus=0.1, batch_size=None)


def add_transformers_sampler(ds: ray.data.Dataset, config: PreferenceConfig, model_path: str) -> ray.data.Dataset:
    pool = config.sampler
    threads = None if pool.num_gpus else max(1, int(pool.num_cpus))
    return pool_map(ds, SampleBatch, {"model_path": model_path, "data": config.data, "sampling": config.sampling,
                                      "model": config.sampler_model, "torch_threads": threads}, pool)


def preference_plan(queries: pa.Table, config: PreferenceConfig, model_path: str) -> ray.data.Dataset:
    """Query rows -> ranked (and AVEm-written) query rows, one out per query in."""
    ds = table_blocks(queries, config.batch_queries)
    add_sampler = add_vllm_sampler if config.sampler_backend == "vllm" else add_transformers_sampler
    ds = add_sampler(ds, config, model_path)
    judge = partial(judge_stage, config.judge.backend, config.output, config.judge.max_tokens, config.judge.temperature)
    ds = pool_map(ds, JudgeBatch, {"factory": judge}, config.judge.pool)
    # Pure Python on a few rows: a sliver of a CPU, so it never waits behind the model pools.
    ds = ds.map_batches(rank_batch, fn_kwargs={"ranking": config.ranking}, batch_format="pyarrow", num_cpus=0.1,
                        udf_modifying_row_count=False)
    if config.avem.enabled:
        writer = config.avem.writer
        writer_factory = partial(writer_stage, writer.backend, config.output, writer.max_tokens)
        ds = pool_map(ds, AvemBatch, {"factory": writer_factory}, writer.pool)
    return ds


# -- resumable output ----------------------------------------------------------------------------------------
class PreferenceWriter:
    """Pairs and ledger parts per batch of finished queries; the ledger part, written second, commits them."""

    def __init__(self, output: str, pairing: str, flush_queries: int, run_id: str, max_attempts: int = 3) -> None:
        self.ledger_dir, self.pairs_dir = storage.join(output, LEDGER_DIR), storage.join(output, PAIRS_DIR)
        self.quarantine = storage.strip_protocol(storage.join(output, QUARANTINE_DIR))
        self.pairing, self.flush_queries, self.run_id = pairing, flush_queries, run_id
        self.max_attempts = max_attempts
        self._pending: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._earlier: Counter[str] = Counter()  # retryable drops per query in this round's ledger
        self.retryable_written = 0
        self._parts = 0
        self.queries_written = self.pairs_written = 0

    def finished(self, round_: int) -> set[str]:
        """Clip ids this round already has in the ledger; cleans what a killed run left half done."""
        fs = storage.filesystem(self.ledger_dir)
        ledger = _parts(fs, self.ledger_dir)
        for name, path in _parts(fs, self.pairs_dir, suffix=(".parquet", ".tmp")).items():
            if name not in ledger:
                set_aside(fs, path, self.quarantine, "its ledger part was never written (interrupted run)")
        for stray in _parts(fs, self.ledger_dir, suffix=(".tmp",)).values():
            set_aside(fs, stray, self.quarantine, "the temporary file of an interrupted write")
        table = read_parts(self.ledger_dir, LEDGER_SCHEMA, columns=["clip_id", "round", "failure"])
        rows = table.filter(pc.equal(table.column("round"), round_)).to_pylist()
        # A query dropped because the judge API failed is not finished (older ledgers have no failure: finished).
        self._earlier = Counter(r["clip_id"] for r in rows if r["failure"] == RETRYABLE)
        done = {r["clip_id"] for r in rows if r["failure"] != RETRYABLE}
        self._seen |= done
        return done

    def add(self, batch: pa.Table) -> None:
        fresh = [q for q in batch.to_pylist() if q["clip_id"] not in self._seen]
        self._seen.update(q["clip_id"] for q in fresh)
        for query in fresh:  # the shared rule: the max_attempts-th retryable drop is gave_up (finished)
            query["failure"] = settle(self._earlier[query["clip_id"]], query.get("failure"), None,
                                      self.max_attempts).failure
            self.retryable_written += query["failure"] == RETRYABLE
        self._pending.extend(fresh)
        if len(self._pending) >= self.flush_queries:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        name = f"{PART_PREFIX}{self.run_id}-{self._parts:05d}.parquet"
        pairs = preference_table(self._pending, self.pairing)
        write_parquet_whole(self.pairs_dir, name, pairs)
        write_parquet_whole(self.ledger_dir, name, ledger_table(self._pending, self.run_id))
        self.queries_written += len(self._pending)
        self.pairs_written += pairs.num_rows
        self._pending, self._parts = [], self._parts + 1


def _parts(fs: Any, directory: str, suffix: tuple[str, ...] = (".parquet",)) -> dict[str, str]:
    """{part file name (without .tmp): path} in a folder; empty when the folder does not exist."""
    try:
        paths = fs.ls(storage.strip_protocol(directory), detail=False)
    except FileNotFoundError:
        return {}
    found = {}
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.startswith(PART_PREFIX) and name.endswith(suffix):
            found[name.removesuffix(".tmp")] = path
    return found


def ledger_table(queries: list[dict[str, Any]], run_id: str) -> pa.Table:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    rows = [{**{k: q[k] for k in LEDGER_SCHEMA.names if k in q}, "run_id": run_id, "done_at": now} for q in queries]
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


def read_ledger(output: str, round_: int | None = None) -> pa.Table:
    """One row per query and round: the finished one, else (a query still to retry) its latest attempt."""
    table = read_parts(storage.join(output, LEDGER_DIR), LEDGER_SCHEMA)
    table = table if round_ is None else table.filter(pc.equal(table.column("round"), round_))
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["failure"] != RETRYABLE, r["done_at"] or 0)):
        latest[(row["clip_id"], row["round"])] = row
    return pa.Table.from_pylist(list(latest.values()), schema=LEDGER_SCHEMA)


# -- summary -------------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values),
            "histogram": {str(s): values.count(float(s)) for s in range(SCORE_BINS) if float(s) in values}}


def _ranked_scores(ledger: list[dict[str, Any]], column: str) -> list[float]:
    return [q["scores"][i] for q in ledger for i in q[column] or []]


def summarize(ledger: list[dict[str, Any]], pairs: pa.Table, extra: dict[str, Any]) -> dict[str, Any]:
    """Counts over the whole ledger of the round (every run so far) and the kept pairs."""
    responses = [r for q in ledger for r in q["responses"] or []]
    fails = Counter(f for q in ledger for f in q["judge_fail"] or [] if f)
    drops = Counter(q["drop_reason"] for q in ledger if q["status"] == "dropped")
    scores = [s for q in ledger for s in q["scores"] or [] if s is not None]
    rows = pairs.to_pylist()
    summary = {
        "queries": {"total": len(ledger), "paired": sum(q["status"] == "paired" for q in ledger),
                    "dropped": dict(sorted(drops.items())),
                    "to_retry": sum(q["failure"] == RETRYABLE for q in ledger),  # judge API failures: run again
                    "gave_up": sum(q["failure"] == GAVE_UP for q in ledger),
                    "by_relation": dict(sorted(Counter(q["av_relation"] for q in ledger).items()))},
        "responses": {"sampled": sum(r is not None for r in responses),
                      "sample_failed_queries": sum(bool(q["sample_error"]) for q in ledger),
                      "sed_parsed": sum(bool(ok) for q in ledger for ok in q["sed_ok"] or []),
                      "sed_unparsed": sum(not ok for q in ledger for ok in q["sed_ok"] or []),
                      "judged": len(scores), "judge_failures": dict(sorted(fails.items()))},
        "pairs": {"kept": len(rows), "dropped_below_margin": sum(q["pairs_below_margin"] or 0 for q in ledger),
                  "by_relation": dict(sorted(Counter(r["av_relation"] for r in rows).items()))},
        "scores": {"all": _stats(scores), "winners": _stats(_ranked_scores(ledger, "winners")),
                   "losers": _stats(_ranked_scores(ledger, "losers")),
                   "chosen": _stats([r["chosen_score"] for r in rows]),
                   "rejected": _stats([r["rejected_score"] for r in rows])},
        **extra,
    }
    if any(q["writer"] for q in ledger):
        avem_fails = Counter(f for q in ledger for f in q["avem_fail"] or [] if f)
        summary["avem"] = {"pairs_with_rejections": sum(bool(r["rejected_vr"] and r["rejected_er"]) for r in rows),
                           "written": sum(v is not None for q in ledger for v in q["avem_vr"] or []),
                           "writer_failures": dict(sorted(avem_fails.items())),
                           "swap_modality": dict(sorted(Counter(r["swap_modality"] for r in rows).items()))}
    return summary


def plot_scores(summary: dict[str, Any], ledger: list[dict[str, Any]]) -> bytes:
    """Histogram of the judge's total score for winners vs losers (every query with enough judged answers)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = [b - 0.5 for b in range(SCORE_BINS + 1)]
    ax.hist(_ranked_scores(ledger, "winners"), bins=bins, alpha=0.6, label="winners (top 2)", color="tab:green")
    ax.hist(_ranked_scores(ledger, "losers"), bins=bins, alpha=0.6, label="losers (bottom 2)", color="tab:red")
    ax.set(xlabel="judge total (logical consistency + evidence alignment, 0-20)", ylabel="responses",
           title=f"CA-DPO: {summary['pairs']['kept']} pairs from {summary['queries']['paired']} of "
                 f"{summary['queries']['total']} queries")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_summary(output: str, summary: dict[str, Any], png: bytes) -> None:
    fs = storage.filesystem(output)
    base = storage.strip_protocol(output)
    fs.pipe_file(f"{base}/summary.json", json.dumps(summary, indent=2, default=str).encode())
    fs.pipe_file(f"{base}/scores.png", png)


# -- the driver ----------------------------------------------------------------------------------------------
def prepare(config: PreferenceConfig) -> PreferenceConfig:
    config = config.model_copy(update={"engine_output": storage.absolute(config.engine_output),
                                       "output": storage.absolute(config.output)})
    fs = storage.filesystem(config.output)
    fs.makedirs(storage.strip_protocol(config.output), exist_ok=True)
    fs.pipe_file(f"{storage.strip_protocol(config.output)}/config.yaml", dump_config(config).encode())
    return config


def run(config: PreferenceConfig) -> dict[str, Any]:
    config = prepare(config)
    model_path = resolve_model_path(config.sft_model)
    selection = select_queries(load_engine_tables(config.engine_output), config.selection, config.round)
    extra: dict[str, Any] = {"selection": selection.stats}
    if config.avem.enabled:
        extra["swap_missing"] = assign_swaps(selection.queries, selection.pool, config.avem.swap_seed,
                                             config.avem.swap_modality)
    run_id = uuid.uuid4().hex[:12]
    writer = PreferenceWriter(config.output, config.ranking.pairing, config.batch_queries, run_id,
                              config.max_attempts)
    done = writer.finished(config.round)
    todo = [q for q in selection.queries if q["clip_id"] not in done]
    log.info("[build_preferences] %d queries selected, %d done by earlier runs, %d to do (run %s)",
             len(selection.queries), len(selection.queries) - len(todo), len(todo), run_id)
    started = time.monotonic()
    if todo:
        plan = preference_plan(pa.Table.from_pylist(todo, schema=QUERY_SCHEMA), config, model_path)
        for batch in plan.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
        writer.flush()
    seconds = time.monotonic() - started
    processed = writer.queries_written
    extra["run"] = {"run_id": run_id, "skipped_already_done": len(selection.queries) - len(todo),
                    "queries_processed": processed, "pairs_written": writer.pairs_written,
                    "seconds": round(seconds, 3), "queries_per_s": round(processed / max(seconds, 1e-9), 4)}
    extra.update(round=config.round, sampler=model_path, judge_model=_judge_name(config))
    ledger = read_ledger(config.output, config.round).to_pylist()
    summary = summarize(ledger, read_preferences(config.output, config.round), extra)
    write_summary(config.output, summary, plot_scores(summary, ledger))
    log.info("[build_preferences] %s", json.dumps({k: summary[k] for k in ("queries", "pairs")}))
    return summary


def _judge_name(config: PreferenceConfig) -> str:
    backend = config.judge.backend
    section = getattr(backend, backend.kind)
    return getattr(section, "model", None) or getattr(section, "model_source", "") or backend.kind
