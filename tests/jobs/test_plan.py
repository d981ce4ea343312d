"""The capacity planner: a small plan worked out by hand, the CLI, and its defaults against the production
configs and the cluster's node types (so the plan prices the cluster that actually runs)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from engine.core.config import EngineConfig, load_config
from engine.ops.capacity import PlanConfig, plan
from jobs.plan import main
from tests.jobs.helpers import REPO

# Round numbers so every line can be checked by hand (see the comments in the test).
SMALL = {
    "clips": 3600,
    "nodes": {"head": {"instance": "h", "cpus": 1, "usd_per_hour": 1.0},
              "cpu": {"instance": "c", "cpus": 4, "usd_per_hour": 2.0, "utilization": 0.5},
              "gpu": {"instance": "g", "cpus": 16, "gpus": 2, "usd_per_hour": 10.0, "utilization": 1.0}},
    "media": {"benchmark_clips_per_s": 2, "benchmark_cores": 1, "clip_cost_factor": 2, "max_cpus": 2,
              "pass_rate": 0.5},
    # 2 actors x min(4 in flight, 1 batch of 2) / 8 s = 0.5/s, under the 1/s quota.
    "annotate": {"applies": 0.5, "requests_per_clip": 2, "actors": 2, "max_concurrency": 4, "batch_size": 2,
                 "batches_at_once": 1, "latency_s": 8, "rate_limit_per_s": 1.0, "cpus_held": 2,
                 "prompt_tokens_per_clip": 1000, "completion_tokens_per_clip": 100, "usd_per_1m_prompt": 10,
                 "usd_per_1m_completion": 100, "pass_rate": 0.5},
    "asr": {"clips_per_gpu_s": 0.25, "max_gpus": 1, "pass_rate": 0.5},
    "describe": {"clips_per_gpu_s": 0.125, "max_gpus": 2, "pass_rate": 1.0},
    # A pilot's measured rate replaces the arithmetic.
    "consistency": {"applies": 1, "requests_per_clip": 1, "requests_per_s": 0.125, "cpus_held": 4,
                    "prompt_tokens_per_clip": 2000, "completion_tokens_per_clip": 0, "usd_per_1m_prompt": 5,
                    "pass_rate": 0.5},
    # The engine's rule: ceil(2 x 2 / 1) = 4 batches of 1 at once, so the window is max_concurrency 2; half of it
    # busy on average: 1 actor x 2 x 0.5 / 16 s = 0.0625/s. Judged after the stream here (the engine's
    # saber_test.judge_in_stream false); test_a_judge_in_the_stream_runs_beside_the_other_stages turns it on.
    "saber_test": {"in_stream": False, "actors": 1, "max_concurrency": 2, "batch_size": 1, "latency_s": 16,
                   "window_efficiency": 0.5, "rate_limit_per_s": None, "cpus_held": 2, "prompt_tokens_per_clip": 1000,
                   "completion_tokens_per_clip": 0, "usd_per_1m_prompt": 20},
    "train": {"epochs": 2, "samples_per_s_per_node": 0.125, "nodes": 1},
}


def test_a_small_plan_worked_out_by_hand():
    result = plan(PlanConfig.model_validate(SMALL))
    rows = {s.stage: (s.clips_in, s.node_hours, s.wall_hours, s.node_usd, s.api_usd) for s in result.stages}
    expected = {
        # 3600 clips x (1 core / 2 clips/s x 2) = 3600 CPU-s = 1 CPU-h; /4 CPUs /0.5 = 0.5 node-h at $2;
        # wall 1 CPU-h / 2 CPUs / 0.5 = 1 h.
        "media": (3600, 0.5, 1.0, 1.0, 0.0),
        # 1800 in, half called, 2 requests each: 1800 requests at 0.5/s = 1 h; 2 of 4 CPUs held -> 0.5 node-h;
        # 900 clips x (1000 x $10 + 100 x $100) / 1M = $18.
        "annotate": (1800, 0.5, 1.0, 1.0, 18.0),
        # 900 / 0.25 clips/s/GPU = 3600 GPU-s = 1 GPU-h; /2 GPUs = 0.5 node-h at $10; wall 1 GPU-h / 1 GPU.
        "asr": (900, 0.5, 1.0, 5.0, 0.0),
        # 450 / 0.125 = 1 GPU-h; 0.5 node-h; wall 1 GPU-h / 2 GPUs = 0.5 h.
        "describe": (450, 0.5, 0.5, 5.0, 0.0),
        # 450 requests at 0.125/s = 1 h holding all 4 CPUs -> 1 node-h at $2; 450 x 2000 x $5 / 1M = $4.5.
        "consistency": (450, 1.0, 1.0, 2.0, 4.5),
        # 225 kept at 0.0625/s = 1 h holding 2 of 4 CPUs -> 0.5 node-h; 225 x 1000 x $20 / 1M = $4.5.
        "saber_test": (225, 0.5, 1.0, 1.0, 4.5),
        # 225 x 2 epochs = 450 samples at 0.125/s = 1 node-h at $10.
        "train": (225, 1.0, 1.0, 10.0, 0.0),
        # stream 1 h (its slowest stages) + SABER-Test 1 h + training 1 h = 3 h at $1.
        "head": (3600, 3.0, 3.0, 3.0, 0.0),
    }
    assert rows.keys() == expected.keys()
    for stage, numbers in expected.items():
        assert rows[stage] == pytest.approx(numbers), stage
    assert (result.kept, result.build_wall_hours) == (225, 2.0)
    assert (result.node_hours, result.node_usd, result.api_usd, result.total_usd) == pytest.approx((7.5, 28, 27, 55))


def test_a_judge_in_the_stream_runs_beside_the_other_stages():
    config = PlanConfig.model_validate({**SMALL, "saber_test": {**SMALL["saber_test"], "in_stream": True}})
    result = plan(config)
    rows = {s.stage: (s.node_hours, s.wall_hours) for s in result.stages}
    assert rows["saber_test"] == pytest.approx((0.5, 1.0))  # the same work as after the stream
    # The stream: max(media 1, annotate 1, asr 1, describe 0.5, consistency 1, SABER-Test 1) = 1 h; + training 1 h.
    assert result.build_wall_hours == pytest.approx(1.0) and rows["head"] == pytest.approx((2.0, 2.0))
    slow = plan(PlanConfig.model_validate({**SMALL, "saber_test": {**SMALL["saber_test"], "in_stream": True,
                                                                   "latency_s": 48}}))
    # 225 clips at 1 x 2 x 0.5 / 48 s = 1/48 per s: 3 h, now the slowest stage of the stream.
    assert (slow.build_wall_hours, slow.bottleneck) == (pytest.approx(3.0), "saber_test")


def test_disabled_judge_and_training_drop_out_of_the_plan():
    small = SMALL | {"saber_test": SMALL["saber_test"] | {"enabled": False}, "train": {"enabled": False}}
    result = plan(PlanConfig.model_validate(small))
    assert [s.stage for s in result.stages][-2:] == ["consistency", "head"]
    assert result.stages[-1].wall_hours == result.build_wall_hours == 1.0


def test_annotate_default_rate_worked_by_hand():
    """510,000 clips reach annotate (600,000 x 0.85), 1.03 requests each = 525,300 requests at ~20 s per answer."""
    config = PlanConfig()
    # 8 actors x min(32, 4 batches x 16) = 256 in flight / 20 s = 12.8/s, over the 10/s quota: 10/s.
    assert (config.annotate.window, config.annotate.sustained_requests_per_s) == (32, 10.0)
    hours = {s.stage: s.wall_hours for s in plan(config).stages}
    assert hours["annotate"] == pytest.approx(525_300 / 10 / 3600)  # 14.59 h
    # One batch at a time per actor (the engine before batches_in_flight): 8 x 16 / 20 s = 6.4/s, 22.80 h.
    one_at_a_time = PlanConfig.model_validate({"annotate": {"batches_at_once": 1}})
    assert one_at_a_time.annotate.sustained_requests_per_s == pytest.approx(6.4)
    assert plan(one_at_a_time).stages[1].wall_hours == pytest.approx(525_300 / 6.4 / 3600)


def test_cli_takes_the_api_window_efficiency_from_a_models_benchmark(tmp_path, capsys):
    bench = tmp_path / "models.json"
    bench.write_text(json.dumps({"benchmark": "models", "runs": {"before": {"window_efficiency": 0.06},
                                                                 "after": {"window_efficiency": 0.25}}}))
    out = tmp_path / "plan.json"
    assert main(["--clips", "600000", "--benchmark", str(bench), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert {saved["inputs"][s]["window_efficiency"] for s in ("annotate", "consistency", "saber_test")} == {0.25}
    annotate = saved["plan"]["stages"][1]
    # 8 actors x 32 in flight x 0.25 / 20 s = 3.2/s, under the quota: 525,300 requests / 3.2 = 45.6 h.
    assert annotate["stage"] == "annotate" and annotate["wall_hours"] == pytest.approx(525_300 / 3.2 / 3600)
    assert "3.2 req/s gemini-2.5-pro" in capsys.readouterr().out


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["--clips", "600000", "--json", str(out), "annotate.requests_per_s=20"]) == 0
    printed = capsys.readouterr().out
    assert "SABER capacity plan: 600,000 input clips" in printed and "total" in printed
    saved = json.loads(out.read_text())
    assert saved["inputs"]["annotate"]["requests_per_s"] == 20
    assert [s["stage"] for s in saved["plan"]["stages"]] == [
        "media", "annotate", "asr", "describe", "consistency", "saber_test", "train", "head"]
    assert math.isclose(saved["plan"]["total_usd"], sum(s["total_usd"] for s in saved["plan"]["stages"]))


def test_cli_takes_media_throughput_from_a_benchmark(tmp_path, capsys):
    bench = tmp_path / "engine.json"
    bench.write_text(json.dumps({"cpus": 4.0, "runs": [{"stages": "media", "baseline": {"clips_per_s": 10.0}}]}))
    assert main(["--clips", "1000", "--benchmark", str(bench), "media.clip_cost_factor=1"]) == 0
    assert "0.4 CPU-s/clip" in capsys.readouterr().out  # 4 cores / 10 clips/s


def test_cli_reports_every_config_error_at_once(capsys):
    assert main(["media.pass_rate=1.5", "nodes.gpu.gpus=0"]) == 2
    err = capsys.readouterr().err
    assert "media.pass_rate" in err and "nodes.gpu.gpus" in err


def test_defaults_price_the_production_pools_on_the_cluster_node_types():
    config = PlanConfig()
    engine = load_config(EngineConfig, REPO / "jobs/configs/production.yaml", [],
                         {"input": "s3://b/raw/", "output": "s3://b/out/"})
    res, vllm = engine.resources, engine.describe.backend.vllm
    assert config.media.max_cpus == res.media_concurrency[1] * res.media_num_cpus
    assert config.asr.max_gpus == res.asr_concurrency[1] * res.asr_num_gpus
    assert config.describe.max_gpus == vllm.concurrency[1] * vllm.engine_kwargs.get("tensor_parallel_size", 1)
    for cost, stage in ((config.annotate, engine.annotate), (config.consistency, engine.consistency.judge),
                        (config.saber_test, engine.saber_test.judge)):
        assert cost.cpus_held == stage.pool.concurrency[1] * stage.pool.num_cpus
        assert cost.model == stage.backend.http.model
        assert (cost.actors, cost.batch_size, cost.max_concurrency) == (
            stage.pool.concurrency[1], stage.pool.batch_size, stage.backend.http.max_concurrency)
    types = yaml.safe_load((REPO / "cluster/aws/saber-cluster.yaml").read_text())["available_node_types"]
    for ours, theirs in ((config.nodes.head, types["head"]), (config.nodes.cpu, types["cpu"]),
                         (config.nodes.gpu, types["gpu_a100"])):
        assert ours.instance == theirs["node_config"]["InstanceType"]
    assert (config.nodes.cpu.cpus, config.nodes.gpu.cpus, config.nodes.gpu.gpus) == (
        types["cpu"]["resources"]["CPU"], types["gpu_a100"]["resources"]["CPU"], types["gpu_a100"]["resources"]["GPU"])
