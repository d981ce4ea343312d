"""How engine.dataset.pipeline assembles stages into a plan: which stages and pools, in what order, with what resources.

Nothing here starts Ray: the Ray Data calls are replaced by recorders, and ray.init refuses.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest
import ray
import ray.data

from engine.core.config import EngineConfig, PoolConfig, load_config
from engine.core.schema import CLIP_SCHEMA, WORK_SCHEMA, new_row, rows_to_table
from engine.dataset import pipeline
from engine.dataset.pipeline import (
    StageChain,
    annotate_stage,
    build_plan,
    describe_stage,
    funnel_stages,
    media_stages,
    minimum_resources,
    model_pools,
    run_media_chain,
    stage_backend,
    table_blocks,
    uses_vllm_batch,
    vllm_gpus_per_engine,
)
from engine.dataset.sources import SOURCE_SCHEMA
from engine.stages.annotate import AnnotateStage
from engine.stages.annotation_check import AnnotationCheckStage
from engine.stages.asr import AsrWerFilterStage
from engine.stages.decode import DecodeStage
from engine.stages.judge import ConsistencyJudgeStage
from engine.stages.noise import NoiseFilterStage
from engine.stages.probe import ProbeStage

HTTP = {"kind": "http", "http": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": ""}}
LOCAL = {"kind": "local", "local": {"model": "tiny-vl:/nowhere", "kind": "qwen2_5_vl"}}
VLLM = {"kind": "vllm", "vllm": {"engine_kwargs": {"tensor_parallel_size": 2, "pipeline_parallel_size": 3},
                                 "concurrency": [2, 3]}}
MEDIA_TYPES = [AnnotationCheckStage, ProbeStage, DecodeStage, NoiseFilterStage]


@pytest.fixture(autouse=True)
def _ray_never_started(monkeypatch):
    """Planning must not start Ray (a Ray another module left up may be connected; it must stay as it was)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline test started Ray")

    was_up = ray.is_initialized()
    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert ray.is_initialized() == was_up


def _config(**sections) -> EngineConfig:
    return EngineConfig(input="/in", output="/out", **sections)


def _full(describe_backend=LOCAL, method="judge", **sections) -> EngineConfig:
    """Every model stage on, each pool sized differently so a mix-up shows."""
    return _config(
        resources={"media_concurrency": [2, 6], "media_num_cpus": 2, "media_batch_size": 8, "asr_concurrency": [3, 4],
                   "asr_num_cpus": 1, "asr_num_gpus": 0.25, "asr_batch_size": 16},
        annotate={"enabled": True, "backend": HTTP, "pool": {"concurrency": [2, 5], "num_cpus": 1.5, "batch_size": 2}},
        describe={"enabled": True, "backend": describe_backend,
                  "pool": {"concurrency": [1, 2], "num_cpus": 4, "num_gpus": 1, "batch_size": 3}},
        consistency={"enabled": True, "method": method, "min_judge_score": 7,
                     "pool": {"concurrency": [1, 1], "num_cpus": 0.5},
                     "judge": {"enabled": True, "backend": HTTP, "pool": {"concurrency": [1, 3], "num_cpus": 0.25}}},
        **sections,
    )


def test_http_answers_are_cached_under_the_output_by_default(tmp_path):
    config = load_config(EngineConfig, None, [
        "input=/in", f"output={tmp_path}", "annotate.enabled=true", "annotate.backend.kind=http",
        "annotate.backend.http.base_url=http://127.0.0.1:9/v1", "annotate.backend.http.model=m",
        "annotate.backend.http.api_key_env="])
    backend = stage_backend(config, config.annotate.backend, "annotate")
    assert backend.config.cache_dir == str(tmp_path / "cache" / "annotate")
    explicit = config.annotate.backend.model_copy(
        update={"http": config.annotate.backend.http.model_copy(update={"cache_dir": "/elsewhere"})})
    assert stage_backend(config, explicit, "annotate").config.cache_dir == "/elsewhere"


def test_default_plan_is_the_media_chain_then_asr():
    config = _config()
    assert funnel_stages(config) == ["annotation", "probe", "decode", "noise", "asr"]
    assert [stage for stage, _, _ in model_pools(config)] == ["asr"]
    stages = [factory() for factory in media_stages(config)]
    assert [type(stage) for stage in stages] == MEDIA_TYPES
    assert [stage.name for stage in stages] == funnel_stages(config)[:4]
    assert stages[1].config is config.media and stages[2].config is config.media and stages[3].config is config.noise


def test_disabled_stages_leave_the_plan():
    config = _config(noise={"enabled": False}, asr={"enabled": False})
    assert funnel_stages(config) == ["annotation", "probe", "decode"]
    assert model_pools(config) == []
    assert [type(factory()) for factory in media_stages(config)] == MEDIA_TYPES[:3]
    config = _full(noise={"enabled": False}, asr={"enabled": False})
    assert funnel_stages(config) == ["annotation", "probe", "decode", "annotate", "describe", "consistency"]


def test_model_stages_follow_the_media_chain_in_funnel_order():
    config = _full()
    funnel = funnel_stages(config)
    assert funnel == ["annotation", "probe", "decode", "noise", "annotate", "asr", "describe", "consistency"]
    # annotate before asr: the WER check needs the transcript an annotator may have just written.
    assert [stage for stage, _, _ in model_pools(config)] == funnel[4:]


def test_each_pool_takes_its_resources_from_its_own_section():
    pools = {stage: pool for stage, _, pool in model_pools(_full())}
    assert pools == {
        "annotate": PoolConfig(concurrency=(2, 5), num_cpus=1.5, num_gpus=0.0, batch_size=2),
        # ASR has no section of its own: its pool is assembled from resources.asr_*.
        "asr": PoolConfig(concurrency=(3, 4), num_cpus=1.0, num_gpus=0.25, batch_size=16),
        "describe": PoolConfig(concurrency=(1, 2), num_cpus=4.0, num_gpus=1.0, batch_size=3),
        "consistency": PoolConfig(concurrency=(1, 3), num_cpus=0.25, num_gpus=0.0, batch_size=4),  # the judge's
    }
    embedding = {stage: pool for stage, _, pool in model_pools(_full(method="embedding"))}
    assert embedding["consistency"] == PoolConfig(concurrency=(1, 1), num_cpus=0.5, num_gpus=0.0, batch_size=4)


def test_pool_factories_build_the_stage_of_their_name():
    config = _full()
    factories = {stage: factory for stage, factory, _ in model_pools(config)}
    # Model-loading stages are built only by calling the factory (in the actor), never while planning.
    assert (factories["asr"].func, factories["asr"].args) == (AsrWerFilterStage, (config.asr,))
    assert (factories["describe"].func, factories["describe"].args) == (describe_stage, (config,))
    annotate = factories["annotate"]()
    assert isinstance(annotate, AnnotateStage) and annotate.max_tokens == 1024
    assert annotate.backend.config.cache_dir == "/out/cache/annotate"
    judge = factories["consistency"]()
    assert isinstance(judge, ConsistencyJudgeStage) and judge.min_score == 7
    assert judge.backend.config.cache_dir == "/out/cache/consistency"


def test_only_a_vllm_describe_runs_as_a_vllm_batch():
    vllm = _full(describe_backend=VLLM)
    assert [uses_vllm_batch(vllm, stage) for stage in ("annotate", "asr", "describe", "consistency")] == [
        False, False, True, False]
    assert not uses_vllm_batch(_full(describe_backend=LOCAL), "describe")
    assert not uses_vllm_batch(_full(describe_backend=HTTP), "describe")
    assert not uses_vllm_batch(_config(), "describe")  # disabled, no backend at all


def test_minimum_resources_count_every_pool_at_its_minimum_size():
    # CPUs: media 2 + annotate 2 x 1.5 + asr 3 x 1 + describe 1 x 4 + judge 1 x 0.25 = 12.25
    # GPUs: asr 3 x 0.25 + describe 1 x 1 = 1.75
    assert minimum_resources(_full(describe_backend=LOCAL)) == {"CPU": 12.25, "GPU": 1.75}
    # A vLLM describe has no pool of ours; it needs 2 engines x (tensor 2 x pipeline 3) GPUs = 12.
    assert minimum_resources(_full(describe_backend=VLLM)) == {"CPU": 8.25, "GPU": 12.75}
    assert minimum_resources(_config()) == {"CPU": 2.0, "GPU": 0.0}  # media task 1 + asr 1 x 1 CPU
    vllm = _full(describe_backend=VLLM).describe.backend.vllm
    assert vllm_gpus_per_engine(vllm) == 6
    assert vllm_gpus_per_engine(vllm.model_copy(update={"engine_kwargs": {}})) == 1


def _ids(count: int) -> pa.Table:
    return pa.table({"n": list(range(count))})


def test_table_blocks_cut_the_table_into_block_rows_slices(monkeypatch):
    monkeypatch.setattr(ray.data, "from_arrow", lambda tables: tables)  # the blocks, as handed to Ray
    blocks = table_blocks(_ids(10), 4)
    assert [block["n"].to_pylist() for block in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [block["n"].to_pylist() for block in table_blocks(_ids(8), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [block.num_rows for block in table_blocks(_ids(10), 100)] == [10]
    assert [block.num_rows for block in table_blocks(_ids(3), 1)] == [1, 1, 1]
    empty = table_blocks(_ids(0), 4)  # still one (empty) block, so the plan keeps its schema
    assert len(empty) == 1 and empty[0].num_rows == 0 and empty[0].schema.names == ["n"]


class _RecordingDataset:
    """Stands in for ray.data.Dataset: records the operators a plan chains, in order."""

    def __init__(self) -> None:
        self.ops: list[tuple[object, object]] = []

    def map_batches(self, fn, **kwargs):
        self.ops.append((fn, kwargs))
        return self

    def select_columns(self, columns):
        self.ops.append(("select_columns", list(columns)))  # a Project step of its own: the plan must not add one
        return self


def test_build_plan_chains_media_tasks_then_one_actor_pool_per_model_stage(monkeypatch):
    config = _full(describe_backend=VLLM, block_rows=5)
    source = _ids(12)
    ds, blocked = _RecordingDataset(), []
    monkeypatch.setattr(pipeline, "table_blocks", lambda table, rows: blocked.append((table, rows)) or ds)
    monkeypatch.setattr(pipeline, "add_vllm_describe", lambda d, c, s: d.ops.append(("vllm_describe", c, s)) or d)
    assert build_plan(source, config) is ds
    assert blocked == [(source, 5)]
    (media_fn, media), annotate, asr, vllm, judge = ds.ops  # and no select_columns step after them

    assert media_fn is run_media_chain
    assert media["fn_kwargs"]["expand_source"] is True
    assert [type(factory()) for factory in media["fn_kwargs"]["factories"]] == MEDIA_TYPES
    assert (media["batch_size"], media["num_cpus"], media["batch_format"]) == (8, 2.0, "pyarrow")
    assert media["compute"] == ray.data.TaskPoolStrategy(size=6)  # the media pool's maximum
    assert media["udf_modifying_row_count"] is False

    expected = {  # stage: (factory function, ActorPool min/max, batch_size, num_cpus, num_gpus, batches at once)
        # HTTP stages (max_concurrency 8) run ceil(2 x 8 / batch_size) batches at once per actor; local models one.
        "annotate": (annotate, annotate_stage, 2, 5, 2, 1.5, 0.0, 8),
        "asr": (asr, AsrWerFilterStage, 3, 4, 16, 1.0, 0.25, 1),
        "consistency": (judge, pipeline.consistency_stage, 1, 3, 4, 0.25, 0.0, 4),
    }
    for stage, ((fn, kwargs), factory_fn, low, high, batch, cpus, gpus, calls) in expected.items():
        assert fn is StageChain, stage
        [factory] = kwargs["fn_constructor_kwargs"]["factories"]
        assert factory.func is factory_fn, stage
        threads = {"max_concurrent_calls_per_actor": calls, "enable_true_multi_threading": True} if calls > 1 else {}
        assert kwargs["compute"] == ray.data.ActorPoolStrategy(min_size=low, max_size=high, **threads), stage
        assert (kwargs["batch_size"], kwargs["num_cpus"], kwargs["num_gpus"]) == (batch, cpus, gpus), stage
        assert kwargs["udf_modifying_row_count"] is False and kwargs["batch_format"] == "pyarrow", stage
    assert vllm[:2] == ("vllm_describe", config)  # in describe's place, between asr and consistency

    # Each step outputs the clip table's columns plus the media a later step reads: frames until describe, audio
    # until asr; raw annotations and frame times stay in the media task. The last step outputs the clip table.
    extra = [sorted(set(schema.names) - set(CLIP_SCHEMA.names)) for schema in (
        media["fn_kwargs"]["schema"], annotate[1]["fn_constructor_kwargs"]["schema"],
        asr[1]["fn_constructor_kwargs"]["schema"], vllm[2], judge[1]["fn_constructor_kwargs"]["schema"])]
    assert extra == [["audio_pcm", "frames_jpeg"], ["audio_pcm", "frames_jpeg"], ["frames_jpeg"], [], []]
    assert judge[1]["fn_constructor_kwargs"]["schema"] == CLIP_SCHEMA and vllm[2] == CLIP_SCHEMA
    assert all(set(CLIP_SCHEMA.names) <= set(schema.names) <= set(WORK_SCHEMA.names) for schema in (
        media["fn_kwargs"]["schema"], asr[1]["fn_constructor_kwargs"]["schema"]))


def test_build_plan_uses_an_actor_pool_for_a_non_vllm_describe(monkeypatch):
    ds = _RecordingDataset()
    monkeypatch.setattr(pipeline, "table_blocks", lambda table, rows: ds)
    monkeypatch.setattr(pipeline, "add_vllm_describe", lambda d, c: pytest.fail("vLLM batch for a local describe"))
    build_plan(_ids(1), _full(describe_backend=LOCAL))
    fn, describe = ds.ops[3]
    assert fn is StageChain and describe["fn_constructor_kwargs"]["factories"][0].func is describe_stage
    assert describe["compute"] == ray.data.ActorPoolStrategy(min_size=1, max_size=2)
    assert (describe["batch_size"], describe["num_cpus"], describe["num_gpus"]) == (3, 4.0, 1.0)


class _Tag:
    """A fake stage: appends its tag to each row's label and leaves a transient object on the row."""

    built = 0

    def __init__(self, tag: str, seen: list) -> None:
        self.tag, self.seen = tag, seen
        _Tag.built += 1

    def __call__(self, rows):
        for row in rows:
            row["label"] = (row["label"] or "") + self.tag
            row["_media"] = object()
        self.seen.extend(rows)
        return rows


def test_media_chain_expands_source_rows_runs_stages_in_order_and_drops_transients():
    source = pa.Table.from_pylist([
        {"clip_id": "stale", "source_uri": "/in/a.mp4", "dataset": "d", "lang": "en", "label": None,
         "source_video": "/in/a.mp4", "annotation_raw": None, "annotation_uri": "/in/a.json"},
        {"clip_id": "stale", "source_uri": "/in/b.mp4", "dataset": "d", "lang": None, "label": "x",
         "source_video": "/in/b.mp4", "annotation_raw": "{}", "annotation_uri": None},
    ], schema=SOURCE_SCHEMA)
    seen: list = []
    out = run_media_chain(source, [lambda: _Tag("1", seen), lambda: _Tag("2", seen)], expand_source=True)
    assert out.schema == WORK_SCHEMA
    rows = out.to_pylist()
    # The clip id is recomputed from the URI (sha1, 20 hex digits), never taken from the listing.
    assert [r["clip_id"] for r in rows] == [hashlib.sha1(u).hexdigest()[:20] for u in (b"/in/a.mp4", b"/in/b.mp4")]
    assert [(r["status"], r["lang"], r["label"], r["annotation_raw"]) for r in rows] == [
        ("kept", "en", "12", None), ("kept", None, "x12", "{}")]
    assert rows[0]["annotation_uri"] == "/in/a.json" and rows[0]["frames_jpeg"] is None
    assert seen and not any("_media" in row for row in seen)  # transient objects never leave the worker

    full = rows_to_table([new_row("/in/c.mp4", label="y")])  # later pools get full clip rows as they are
    assert run_media_chain(full, [lambda: _Tag("3", [])], expand_source=False).to_pylist()[0]["label"] == "y3"


def test_stage_chain_builds_its_stages_once_per_actor():
    _Tag.built, seen = 0, []
    chain = StageChain([lambda: _Tag("a", seen), lambda: _Tag("b", seen)])
    assert _Tag.built == 2
    table = rows_to_table([new_row("/in/a.mp4"), new_row("/in/b.mp4", label="z")])
    assert chain(table).column("label").to_pylist() == ["ab", "zab"]
    assert chain(table).column("label").to_pylist() == ["ab", "zab"]  # the input table is not modified
    assert _Tag.built == 2
    assert not any("_media" in row for row in seen)
