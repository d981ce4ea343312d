"""The one module that turns stages into a Ray Data plan.

Stages that need no model run chained inside one task (the clip bytes and decoded media never leave the
worker between them); stages that load a model get an actor pool so the model loads once per actor.
Each pool's resources come from the config, so the autoscaler can scale CPU and GPU pools separately.

Each step hands on only the columns a later step still reads (`transit_schemas`): the decoded frames and audio
(hundreds of KB a clip; the 16 kHz float32 audio alone is 64 KB a second) leave the rows inside the task of their
last reader, and the last step's output is the clip table itself, so no separate projection step has to wait for a
CPU before the first rows reach the writer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import ray
import ray.data

from engine.core import storage
from engine.core.config import BackendConfig, EngineConfig, PoolConfig
from engine.core.schema import CLIP_SCHEMA, WORK_COLUMNS, WORK_SCHEMA, is_alive, new_row, rows_to_table
from engine.models.backends.base import ChatBackend
from engine.models.backends.vllm_batch import VllmBatchConfig
from engine.stages.annotation_check import AnnotationCheckStage
from engine.stages.asr import AsrWerFilterStage
from engine.stages.base import Row, RowStage
from engine.stages.decode import DecodeStage
from engine.stages.fingerprint import FingerprintStage
from engine.stages.model_stage import batches_per_actor
from engine.stages.noise import NoiseFilterStage
from engine.stages.probe import ProbeStage

StageFactory = Callable[[], Callable[[list[Row]], list[Row]]]
WORK_MEDIA = ("frames_jpeg", "frame_times", "audio_pcm")  # the decoded media among the work columns


def funnel_stages(config: EngineConfig) -> list[str]:
    """Stage names in plan order, as they appear in reject_stage and in the report's funnel."""
    names = ["annotation", "probe", "decode"]
    names += ["noise"] if config.noise.enabled else []
    names += ["fingerprint"] if config.neardup.enabled else []
    names += ["annotate"] if config.annotate.enabled else []
    names += ["asr"] if config.asr.enabled else []
    names += ["describe"] if config.describe.enabled else []
    names += ["consistency"] if config.consistency.enabled else []
    names += ["neardup"] if config.neardup.enabled else []  # after the stream: engine.dataset.neardup
    names += ["curation"] if config.curation else []  # a curator's drops (engine.dataset.curation)
    return names


def stage_backend(config: EngineConfig, backend: BackendConfig, stage: str) -> ChatBackend:
    """The stage's backend; an HTTP one without a cache_dir caches under OUTPUT/cache/<stage>, so a rerun
    or a resume never pays for the same answer twice unless told otherwise."""
    from engine.models.backends.factory import make_backend

    if backend.kind == "http" and backend.http.cache_dir is None:
        http = backend.http.model_copy(update={"cache_dir": storage.join(config.output, "cache", stage)})
        backend = backend.model_copy(update={"http": http})
    return make_backend(backend)


def annotate_stage(config: EngineConfig) -> Callable[[list[Row]], list[Row]]:
    from engine.stages.annotate import AnnotateStage

    backend = stage_backend(config, config.annotate.backend, "annotate")
    return AnnotateStage(backend, max_tokens=config.annotate.max_tokens)


def describe_stage(config: EngineConfig) -> Callable[[list[Row]], list[Row]]:
    from engine.stages.describe import DescribeStage

    return DescribeStage(stage_backend(config, config.describe.backend, "describe"),
                         max_tokens=config.describe.max_tokens)


def consistency_stage(config: EngineConfig) -> Callable[[list[Row]], list[Row]]:
    cfg = config.consistency
    if cfg.method == "judge":
        from engine.stages.judge import ConsistencyJudgeStage

        return ConsistencyJudgeStage(stage_backend(config, cfg.judge.backend, "consistency"),
                                     min_score=cfg.min_judge_score)
    from engine.stages.consistency import EmbeddingConsistencyStage

    return EmbeddingConsistencyStage(cfg)


def relation_stage(config: EngineConfig) -> Callable[[list[Row]], list[Row]]:
    from engine.stages.relation import RelationJudgeStage

    judge = config.saber_test.judge
    return RelationJudgeStage(stage_backend(config, judge.backend, "relation"), max_tokens=judge.max_tokens)


def model_pools(config: EngineConfig) -> list[tuple[str, StageFactory, PoolConfig]]:
    """(stage, factory, pool) after the media tasks, in plan order (annotate must precede the ASR-WER check)."""
    res = config.resources
    pools: list[tuple[str, StageFactory, PoolConfig]] = []
    if config.annotate.enabled:
        pools.append(("annotate", partial(annotate_stage, config), config.annotate.pool))
    if config.asr.enabled:
        asr_pool = PoolConfig(concurrency=res.asr_concurrency, num_cpus=res.asr_num_cpus,
                              num_gpus=res.asr_num_gpus, batch_size=res.asr_batch_size)
        pools.append(("asr", partial(AsrWerFilterStage, config.asr), asr_pool))
    if config.describe.enabled:
        pools.append(("describe", partial(describe_stage, config), config.describe.pool))
    if config.consistency.enabled:
        pool = config.consistency.judge.pool if config.consistency.method == "judge" else config.consistency.pool
        pools.append(("consistency", partial(consistency_stage, config), pool))
    return pools


def pool_stage_type(config: EngineConfig, stage: str) -> type[RowStage]:
    """The class a pool's factory builds (nothing is built here): its `requires` say which columns the pool reads."""
    from engine.stages.annotate import AnnotateStage
    from engine.stages.consistency import EmbeddingConsistencyStage
    from engine.stages.describe import DescribeStage
    from engine.stages.judge import ConsistencyJudgeStage

    consistency = ConsistencyJudgeStage if config.consistency.method == "judge" else EmbeddingConsistencyStage
    return {"annotate": AnnotateStage, "asr": AsrWerFilterStage, "describe": DescribeStage,
            "consistency": consistency}[stage]


def transit_schemas(config: EngineConfig) -> list[pa.Schema]:
    """The schema each step outputs: the media task's first, then one per model pool. Every step keeps the clip
    table's columns and those work columns (decoded media, raw annotations) that a later pool declares it needs, so
    frames and audio leave the rows in their last reader's own task and the last step outputs CLIP_SCHEMA."""
    needs = [set(pool_stage_type(config, stage).requires) & set(WORK_COLUMNS) for stage, _, _ in model_pools(config)]
    keep = [set(CLIP_SCHEMA.names).union(*needs[step:]) for step in range(len(needs) + 1)]
    return [pa.schema([field for field in WORK_SCHEMA if field.name in names]) for names in keep]


def uses_vllm_batch(config: EngineConfig, stage: str) -> bool:
    return stage == "describe" and config.describe.backend is not None and config.describe.backend.kind == "vllm"


def add_vllm_describe(ds: ray.data.Dataset, config: EngineConfig, schema: pa.Schema = WORK_SCHEMA) -> ray.data.Dataset:
    """The describe stage as ray.data.llm's vLLM processor (its own GPU actor pool), rows in and out (`schema`'s
    columns out)."""
    from ray.data.llm import build_processor

    from engine.stages.describe_vllm import describe_request, describe_result

    cfg, max_tokens = config.describe.backend.vllm, config.describe.max_tokens
    processor = build_processor(
        processor_config(cfg),
        preprocess=partial(describe_request, max_tokens=max_tokens, temperature=cfg.temperature),
        postprocess=lambda row: row,  # error rows skip postprocess: both kinds are mapped back below
    )
    return processor(ds).map_batches(
        _vllm_results, fn_kwargs={"model_id": cfg.model_source, "convert": describe_result, "schema": schema},
        batch_format="pyarrow", udf_modifying_row_count=False)


def processor_config(config: VllmBatchConfig) -> Any:
    """The `vLLMEngineProcessorConfig`. Errors stay per row (`should_continue_on_error`): one clip that vLLM
    cannot take (too many frames for the context, a corrupt image) becomes a rejection, not a failed job."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = dict(config.engine_kwargs)
    if config.structured_outputs_backend != "auto":
        engine_kwargs["structured_outputs_config"] = {"backend": config.structured_outputs_backend}
    return vLLMEngineProcessorConfig(
        model_source=config.model_source,
        engine_kwargs=engine_kwargs,
        concurrency=config.concurrency,
        batch_size=config.batch_size,
        accelerator_type=config.accelerator_type,
        max_concurrent_batches=config.max_concurrent_batches,
        prepare_multimodal_stage=True,  # turns the image_url data URLs into images for vLLM
        should_continue_on_error=True,
    )


def _vllm_results(table: pa.Table, model_id: str, convert: Callable[[Row, str], Row],
                  schema: pa.Schema = WORK_SCHEMA) -> pa.Table:
    return rows_to_table([convert(row, model_id) for row in table.to_pylist()], schema)


def media_stages(config: EngineConfig) -> list[StageFactory]:
    factories: list[StageFactory] = [
        AnnotationCheckStage,
        lambda: ProbeStage(config.media),
        lambda: DecodeStage(config.media),
    ]
    if config.noise.enabled:
        factories.append(lambda: NoiseFilterStage(config.noise))
    if config.neardup.enabled:  # last before the decoded media are dropped, and only for clips still kept
        factories.append(FingerprintStage)
    return factories


def source_to_rows(table: pa.Table) -> list[Row]:
    """Source listing rows (see engine.dataset.sources) expanded to full clip rows."""
    return [new_row(rec.pop("source_uri"), **{k: v for k, v in rec.items() if k != "clip_id"})
            for rec in table.to_pylist()]


def _finish(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """The rows as a table of `schema`'s columns: transient objects (fetched bytes), the columns no later step reads
    (decoded media after their last reader) and a rejected row's media (no later stage reads them) stay here."""
    for row in rows:
        for key in [k for k in row if k.startswith("_")]:
            del row[key]
        if not is_alive(row):
            row.update(dict.fromkeys(WORK_MEDIA))
    return rows_to_table(rows, schema)


def run_media_chain(table: pa.Table, factories: list[StageFactory], expand_source: bool,
                    schema: pa.Schema = WORK_SCHEMA) -> pa.Table:
    rows = source_to_rows(table) if expand_source else table.to_pylist()
    for factory in factories:
        rows = factory()(rows)
    return _finish(rows, schema)


@dataclass
class StageChain:
    """A callable class for actor pools: builds its stages (loading models) once per actor; outputs `schema`."""

    factories: list[StageFactory]
    schema: pa.Schema = WORK_SCHEMA

    def __post_init__(self) -> None:
        self.stages = [factory() for factory in self.factories]

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        for stage in self.stages:
            rows = stage(rows)
        return _finish(rows, self.schema)


def judges_in_stream(config: EngineConfig) -> bool:
    """Whether the relation judge is the stream's last pool (engine.dataset.relation_stream)."""
    return config.saber_test.enabled and config.saber_test.judge.enabled and config.saber_test.judge_in_stream


def minimum_resources(config: EngineConfig) -> dict[str, float]:
    """CPUs/GPUs the plan needs to run at all: every pool at its minimum size plus one media task."""
    pools = [pool for stage, _, pool in model_pools(config) if not uses_vllm_batch(config, stage)]
    if judges_in_stream(config):
        pools.append(config.saber_test.judge.pool)
    need = {"CPU": config.resources.media_num_cpus + sum(p.concurrency[0] * p.num_cpus for p in pools),
            "GPU": sum(p.concurrency[0] * p.num_gpus for p in pools)}
    if uses_vllm_batch(config, "describe"):
        need["GPU"] += config.describe.backend.vllm.concurrency[0] * vllm_gpus_per_engine(config.describe.backend.vllm)
    return need


def vllm_gpus_per_engine(cfg: Any) -> int:
    """One engine replica spans tensor x pipeline parallel GPUs."""
    kwargs = cfg.engine_kwargs
    return int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))


def table_blocks(table: pa.Table, block_rows: int) -> ray.data.Dataset:
    """A dataset of `block_rows`-row blocks: the unit Ray Data schedules and hands back to the driver."""
    return ray.data.from_arrow([table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)] or [table])


def pool_backend(config: EngineConfig, stage: str) -> BackendConfig | None:
    """The chat backend a pool's stage calls; None for stages without one (ASR, embedding consistency)."""
    if stage == "consistency":
        return config.consistency.judge.backend if config.consistency.method == "judge" else None
    return {"annotate": config.annotate.backend, "describe": config.describe.backend}.get(stage)


def pool_map(ds: ray.data.Dataset, callable_class: type, constructor_kwargs: dict[str, Any],
             pool: PoolConfig, calls: int = 1) -> ray.data.Dataset:
    """One actor pool sized and resourced by `pool` (the model loads once per actor), rows in = rows out. Each actor
    runs `calls` batches at once in threads (HTTP stages: engine.stages.model_stage.batches_per_actor), so one
    batch waiting on a slow answer does not idle the backend's max_concurrency window."""
    threads = {"max_concurrent_calls_per_actor": calls, "enable_true_multi_threading": True} if calls > 1 else {}
    return ds.map_batches(
        callable_class,
        fn_constructor_kwargs=constructor_kwargs,
        batch_format="pyarrow",
        batch_size=pool.batch_size,
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        compute=ray.data.ActorPoolStrategy(min_size=pool.concurrency[0], max_size=pool.concurrency[1], **threads),
        udf_modifying_row_count=False,
    )


def relation_plan(table: pa.Table, config: EngineConfig) -> ray.data.Dataset:
    """Judge rows (engine.dataset.holdout.JUDGE_COLUMNS) -> one relation verdict row each, in an actor pool."""
    from engine.dataset.holdout import RelationBatch

    judge = config.saber_test.judge
    return pool_map(table_blocks(table, config.block_rows), RelationBatch, {"factory": partial(relation_stage, config)},
                    judge.pool, batches_per_actor(judge.backend, judge.pool.batch_size))


def build_plan(source: pa.Table, config: EngineConfig) -> ray.data.Dataset:
    """Source table -> dataset of clip-table rows (CLIP_SCHEMA, plus the relation verdict columns when the judge runs
    in the stream: judges_in_stream), one per source row. The columns are selected inside
    the steps themselves (transit_schemas): a separate select_columns would be an unfused Project step holding a CPU
    of its own, which on a small node waits for the model pools to finish before the first rows reach the writer."""
    res = config.resources
    # Blocks that may fail (their exception logged, their rows dropped) before the build stops. Every stage
    # turns a bad clip into a rejected row, native media code runs in a child process (engine.core.isolation), and
    # Ray retries tasks and actors on lost workers by itself, so an error that reaches Ray Data is a bug,
    # possibly one that a rare clip triggers. Ray's default, 0, would let such a clip end a long build; no
    # limit would let a bug that fails every block run through the whole input. media.max_errored_blocks
    # (default 3) lies between: a systematic bug stops the build within a few blocks, and a dropped block's
    # clips are simply not in clips/, so the next run processes them again. Set on the global context only
    # while the first dataset is made: a dataset keeps a copy of the context it was created under.
    # The output block size (config.output_block_mb) is set the same way.
    context = ray.data.DataContext.get_current()
    defaults = context.max_errored_blocks, context.target_max_block_size
    context.max_errored_blocks = config.media.max_errored_blocks
    context.target_max_block_size = round(config.output_block_mb * 1024 * 1024)
    try:
        ds = table_blocks(source, config.block_rows)
    finally:
        context.max_errored_blocks, context.target_max_block_size = defaults
    schemas = transit_schemas(config)
    ds = ds.map_batches(
        run_media_chain,
        fn_kwargs={"factories": media_stages(config), "expand_source": True, "schema": schemas[0]},
        batch_format="pyarrow",
        batch_size=res.media_batch_size,
        num_cpus=res.media_num_cpus,
        compute=ray.data.TaskPoolStrategy(size=res.media_concurrency[1]),
        udf_modifying_row_count=False,
    )
    for (stage, factory, pool), schema in zip(model_pools(config), schemas[1:], strict=True):
        if uses_vllm_batch(config, stage):
            ds = add_vllm_describe(ds, config, schema)
            continue
        calls = batches_per_actor(pool_backend(config, stage), pool.batch_size)
        ds = pool_map(ds, StageChain, {"factories": [factory], "schema": schema}, pool, calls)
    if judges_in_stream(config):  # CLIP_SCHEMA rows plus their relation verdicts (relation_stream.split_batch)
        from engine.dataset.relation_stream import RelationStreamBatch

        judge = config.saber_test.judge
        ds = pool_map(ds, RelationStreamBatch, {"factory": partial(relation_stage, config)}, judge.pool,
                      batches_per_actor(judge.backend, judge.pool.batch_size))
    return ds
