"""Decoded media leave the rows after their last reader, inside that step's own task, and the plan's last step
outputs the clip table itself: no separate projection step that would hold a CPU of its own (on 2 CPUs it waited
for the ASR pool to finish before the writer got its first rows).

The plan is recorded and its steps run here in order (the media task's function, then each pool's StageChain), with
fake stages that see what a real stage of the same name would see; one test builds the real Ray Data plan (not run).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from engine.core.config import EngineConfig, PoolConfig
from engine.core.schema import CLIP_SCHEMA, WORK_SCHEMA, is_alive, reject
from engine.dataset import pipeline
from engine.dataset.pipeline import StageChain, build_plan, pool_stage_type, run_media_chain, transit_schemas
from engine.dataset.sources import SOURCE_SCHEMA
from engine.stages.describe_vllm import describe_result

HTTP = {"kind": "http", "http": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": ""}}
MEDIA = {"frames_jpeg", "audio_pcm"}
WORK_ONLY = set(WORK_SCHEMA.names) - set(CLIP_SCHEMA.names)


def _config(**sections) -> EngineConfig:
    return EngineConfig(input="/in", output="/out", **sections)


def _full(method: str = "judge") -> EngineConfig:
    return _config(annotate={"enabled": True, "backend": HTTP}, describe={"enabled": True, "backend": HTTP},
                   consistency={"enabled": True, "method": method, "judge": {"enabled": True, "backend": HTTP}})


class _FakeDecode:
    """Fills the decoded media as the decode stage does (every row), then rejects `bad` (media already on it)."""

    def __call__(self, rows):
        for row in rows:
            row.update(frames_jpeg=[b"\xff\xd8" + bytes(2000)] * 4, frame_times=[0.0, 0.5, 1.0, 1.5],
                       audio_pcm=bytes(4 * 16_000), duration_s=2.0, n_frames=4)
            if row["source_uri"].endswith("bad.mp4"):
                reject(row, "noise", "excessive_noise")
        return rows


class _FakeModelStage:
    """Stands in for the pool stage of its name: records the columns of the batch it gets (and the media the rows
    carry), refuses a batch without the real stage's declared inputs (as RowStage does), writes its name."""

    def __init__(self, stage: str, requires: tuple[str, ...], seen: dict) -> None:
        self.stage, self.requires, self.seen = stage, requires, seen

    def __call__(self, rows):
        missing = [col for col in self.requires if col not in rows[0]]
        assert not missing, f"{self.stage} got a batch without {missing}"
        self.seen[self.stage] = (set(rows[0]), {row["source_uri"]: bool(row.get("frames_jpeg")) for row in rows})
        for row in rows:
            if is_alive(row):
                row["provenance"] = (row["provenance"] or "") + self.stage
        return rows


class _Recorder:
    def __init__(self) -> None:
        self.ops: list = []

    def map_batches(self, fn, **kwargs):
        self.ops.append((fn, kwargs))
        return self

    def select_columns(self, columns):
        self.ops.append(("select_columns", columns))
        return self


def _source() -> pa.Table:
    return pa.Table.from_pylist([
        {"source_uri": f"/in/{name}.mp4", "dataset": "d", "lang": "en", "source_video": f"/in/{name}.mp4",
         "annotation_raw": None, "annotation_uri": f"/in/{name}.json"} for name in ("a", "bad", "c")],
        schema=SOURCE_SCHEMA)


def _run_plan(config: EngineConfig, monkeypatch, seen: dict) -> tuple[pa.Table, list]:
    """build_plan recorded, then its steps run in order on the source, as Ray Data would run them."""
    pools = [(stage, lambda s=stage: _FakeModelStage(s, pool_stage_type(config, s).requires, seen), PoolConfig())
             for stage, _, _ in pipeline.model_pools(config)]
    monkeypatch.setattr(pipeline, "model_pools", lambda cfg: pools)
    monkeypatch.setattr(pipeline, "media_stages", lambda cfg: [_FakeDecode])
    monkeypatch.setattr(pipeline, "table_blocks", lambda table, rows: _Recorder())
    ops = build_plan(_source(), config).ops
    table = _source()
    for fn, kwargs in ops:
        if fn is run_media_chain:
            table = run_media_chain(table, **kwargs["fn_kwargs"])
        else:
            assert fn is StageChain, fn  # nothing else: no select_columns step
            table = StageChain(**kwargs["fn_constructor_kwargs"])(table)
    return table, ops


def test_text_only_pools_get_no_media_and_each_medium_leaves_after_its_last_reader(monkeypatch):
    seen: dict = {}
    out, ops = _run_plan(_full(), monkeypatch, seen)
    columns = {stage: cols for stage, (cols, _) in seen.items()}
    assert list(columns) == ["annotate", "asr", "describe", "consistency"]
    assert columns["annotate"] >= MEDIA and columns["asr"] >= MEDIA  # asr: audio, and frames on their way to describe
    assert "frames_jpeg" in columns["describe"] and "audio_pcm" not in columns["describe"]
    assert not WORK_ONLY & columns["consistency"]  # the text-only judge: no frames, audio or raw annotation
    assert not any({"frame_times", "annotation_raw", "annotation_uri"} & cols for cols in columns.values())
    # A clip rejected in the media task carries no media on: no later stage reads a rejected row.
    assert seen["annotate"][1] == {"/in/a.mp4": True, "/in/bad.mp4": False, "/in/c.mp4": True}
    assert len(ops) == 5 and out.schema == CLIP_SCHEMA
    assert out.column("provenance").to_pylist() == ["annotateasrdescribeconsistency", None,
                                                   "annotateasrdescribeconsistency"]


def test_default_plan_drops_frames_in_the_media_task_and_audio_in_the_asr_pool(monkeypatch):
    # Without model pools the media task's own output is the clip table; the embedding consistency reads no media.
    assert transit_schemas(_config(asr={"enabled": False})) == [CLIP_SCHEMA]
    assert transit_schemas(_full(method="embedding"))[-2:] == [CLIP_SCHEMA, CLIP_SCHEMA]
    seen: dict = {}
    out, ops = _run_plan(_config(), monkeypatch, seen)
    assert list(seen) == ["asr"] and "audio_pcm" in seen["asr"][0] and "frames_jpeg" not in seen["asr"][0]
    assert len(ops) == 2 and out.schema == CLIP_SCHEMA


def test_the_written_columns_are_those_of_the_old_plan_that_carried_media_to_the_end(monkeypatch):
    """Same clip table, schema and content, as every step keeping the work columns and one select at the end."""
    new, _ = _run_plan(_full(), monkeypatch, {})
    monkeypatch.setattr(pipeline, "transit_schemas", lambda cfg: [WORK_SCHEMA] * 5)
    old, _ = _run_plan(_full(), monkeypatch, {})
    assert old.schema == WORK_SCHEMA and old.column("frames_jpeg").to_pylist()[2]  # media kept to the end
    assert new.equals(old.select(CLIP_SCHEMA.names))


def test_the_vllm_describe_outputs_the_columns_it_is_given():
    row = dict.fromkeys(WORK_SCHEMA.names) | {"clip_id": "x", "source_uri": "/in/x.mp4", "status": "kept",
                                              "frames_jpeg": [b"jpg"], "generated_text": " a room "}
    out = pipeline._vllm_results(pa.Table.from_pylist([row]), model_id="m", convert=describe_result,
                                 schema=CLIP_SCHEMA)
    assert out.schema == CLIP_SCHEMA and out.column("description").to_pylist() == ["a room"]


def _operators(ds) -> list[str]:
    names, op = [], ds._logical_plan.dag
    while op is not None:
        names.append(op.name)
        op = op.input_dependencies[0] if op.input_dependencies else None
    return names[::-1]


@pytest.mark.usefixtures("local_ray")
def test_the_ray_plan_ends_in_the_last_pool_without_a_project_step():
    ds = build_plan(_source(), _full())
    names = _operators(ds)
    assert names[-5:] == ["MapBatches(run_media_chain)"] + ["MapBatches(StageChain)"] * 4, names
    assert not any("Project" in name or "Select" in name for name in names), names
