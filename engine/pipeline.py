"""The one module that turns stages into a Ray Data plan.

Stages that need no model run chained inside one task (the clip bytes and decoded media never leave the
worker between them); stages that load a model get an actor pool so the model loads once per actor.
Each pool's resources come from the config, so the autoscaler can scale CPU and GPU pools separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import ray
import ray.data

from engine import storage
from engine.backends.base import ChatBackend
from engine.config import BackendConfig, EngineConfig, PoolConfig
from engine.schema import CLIP_SCHEMA, WORK_SCHEMA, new_row, rows_to_table
from engine.stages.annotation_check import AnnotationCheckStage
from engine.stages.asr import AsrWerFilterStage
from engine.stages.base import Row
from engine.stages.decode import DecodeStage
from engine.stages.noise import NoiseFilterStage
from engine.stages.probe import ProbeStage

StageFactory = Callable[[], Callable[[list[Row]], list[Row]]]


def funnel_stages(config: EngineConfig) -> list[str]:
    """Stage names in plan order, as they appear in reject_stage and in the report's funnel."""
    names = ["annotation", "probe", "decode"]
    names += ["noise"] if config.noise.enabled else []
    names += ["annotate"] if config.annotate.enabled else []
    names += ["asr"] if config.asr.enabled else []
    names += ["describe"] if config.describe.enabled else []
    names += ["consistency"] if config.consistency.enabled else []
    return names


def stage_backend(config: EngineConfig, backend: BackendConfig, stage: str) -> ChatBackend:
    """The stage's backend; an HTTP one without a cache_dir caches under OUTPUT/cache/<stage>, so a rerun
    or a resume never pays for the same answer twice unless told otherwise."""
    from engine.backends.factory import make_backend

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


def model_pools(config: EngineConfig) -> list[tuple[StageFactory, PoolConfig]]:
    """Actor pools after the media tasks, in plan order (annotate must precede the ASR-WER check)."""
    res = config.resources
    pools: list[tuple[StageFactory, PoolConfig]] = []
    if config.annotate.enabled:
        pools.append((partial(annotate_stage, config), config.annotate.pool))
    if config.asr.enabled:
        asr_pool = PoolConfig(concurrency=res.asr_concurrency, num_cpus=res.asr_num_cpus,
                              num_gpus=res.asr_num_gpus, batch_size=res.asr_batch_size)
        pools.append((partial(AsrWerFilterStage, config.asr), asr_pool))
    if config.describe.enabled:
        pools.append((partial(describe_stage, config), config.describe.pool))
    if config.consistency.enabled:
        pool = config.consistency.judge.pool if config.consistency.method == "judge" else config.consistency.pool
        pools.append((partial(consistency_stage, config), pool))
    return pools


def media_stages(config: EngineConfig) -> list[StageFactory]:
    factories: list[StageFactory] = [
        AnnotationCheckStage,
        lambda: ProbeStage(config.media),
        lambda: DecodeStage(config.media),
    ]
    if config.noise.enabled:
        factories.append(lambda: NoiseFilterStage(config.noise))
    return factories


def source_to_rows(table: pa.Table) -> list[Row]:
    """Source listing rows (see engine.sources) expanded to full clip rows."""
    return [new_row(rec.pop("source_uri"), **{k: v for k, v in rec.items() if k != "clip_id"})
            for rec in table.to_pylist()]


def _finish(rows: list[Row]) -> pa.Table:
    for row in rows:
        for key in [k for k in row if k.startswith("_")]:  # transient objects (fetched bytes) stay here
            del row[key]
    return rows_to_table(rows, WORK_SCHEMA)


def run_media_chain(table: pa.Table, factories: list[StageFactory], expand_source: bool) -> pa.Table:
    rows = source_to_rows(table) if expand_source else table.to_pylist()
    for factory in factories:
        rows = factory()(rows)
    return _finish(rows)


@dataclass
class StageChain:
    """A callable class for actor pools: builds its stages (loading models) once per actor."""

    factories: list[StageFactory]

    def __post_init__(self) -> None:
        self.stages = [factory() for factory in self.factories]

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        for stage in self.stages:
            rows = stage(rows)
        return _finish(rows)


def minimum_resources(config: EngineConfig) -> dict[str, float]:
    """CPUs/GPUs the plan needs to run at all: every pool at its minimum size plus one media task."""
    pools = [pool for _, pool in model_pools(config)]
    return {"CPU": config.resources.media_num_cpus + sum(p.concurrency[0] * p.num_cpus for p in pools),
            "GPU": sum(p.concurrency[0] * p.num_gpus for p in pools)}


def relation_plan(table: pa.Table, config: EngineConfig) -> ray.data.Dataset:
    """Judge rows (engine.holdout.JUDGE_COLUMNS) -> one relation verdict row each, in an actor pool."""
    from engine.holdout import RelationBatch

    pool, size = config.saber_test.judge.pool, config.block_rows
    ds = ray.data.from_arrow([table.slice(i, size) for i in range(0, table.num_rows, size)] or [table])
    return ds.map_batches(
        RelationBatch,
        fn_constructor_kwargs={"factory": partial(relation_stage, config)},
        batch_format="pyarrow",
        batch_size=pool.batch_size,
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        compute=ray.data.ActorPoolStrategy(min_size=pool.concurrency[0], max_size=pool.concurrency[1]),
        udf_modifying_row_count=False,
    )


def build_plan(source: pa.Table, config: EngineConfig) -> ray.data.Dataset:
    """Source table -> dataset of clip-table rows (media columns dropped), one per source row."""
    res, size = config.resources, config.block_rows
    slices = [source.slice(i, size) for i in range(0, source.num_rows, size)]
    ds = ray.data.from_arrow(slices or [source])
    ds = ds.map_batches(
        run_media_chain,
        fn_kwargs={"factories": media_stages(config), "expand_source": True},
        batch_format="pyarrow",
        batch_size=res.media_batch_size,
        num_cpus=res.media_num_cpus,
        compute=ray.data.TaskPoolStrategy(size=res.media_concurrency[1]),
        udf_modifying_row_count=False,
    )
    for factory, pool in model_pools(config):
        ds = ds.map_batches(
            StageChain,
            fn_constructor_kwargs={"factories": [factory]},
            batch_format="pyarrow",
            batch_size=pool.batch_size,
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
            compute=ray.data.ActorPoolStrategy(min_size=pool.concurrency[0], max_size=pool.concurrency[1]),
            udf_modifying_row_count=False,
        )
    return ds.select_columns(CLIP_SCHEMA.names)
