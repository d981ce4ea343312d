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
    "annotate": {"applies": 0.5, "requests_per_clip": 2, "requests_per_s": 0.5, "cpus_held": 2,
                 "prompt_tokens_per_clip": 1000, "completion_tokens_per_clip": 100, "usd_per_1m_prompt": 10,
                 "usd_per_1m_completion": 100, "pass_rate": 0.5},
    "asr": {"clips_per_gpu_s": 0.25, "max_gpus": 1, "pass_rate": 0.5},
    "describe": {"clips_per_gpu_s": 0.125, "max_gpus": 2, "pass_rate": 1.0},
    "consistency": {"applies": 1, "requests_per_clip": 1, "requests_per_s": 0.125, "cpus_held": 4,
                    "prompt_tokens_per_clip": 2000, "completion_tokens_per_clip": 0, "usd_per_1m_prompt": 5,
                    "pass_rate": 0.5},
    "saber_test": {"requests_per_s": 0.0625, "cpus_held": 2, "prompt_tokens_per_clip": 1000,
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


def test_disabled_judge_and_training_drop_out_of_the_plan():
    small = SMALL | {"saber_test": SMALL["saber_test"] | {"enabled": False}, "train": {"enabled": False}}
    result = plan(PlanConfig.model_validate(small))
    assert [s.stage for s in result.stages][-2:] == ["consistency", "head"]
    assert result.stages[-1].wall_hours == result.build_wall_hours == 1.0


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
    types = yaml.safe_load((REPO / "cluster/aws/saber-cluster.yaml").read_text())["available_node_types"]
    for ours, theirs in ((config.nodes.head, types["head"]), (config.nodes.cpu, types["cpu"]),
                         (config.nodes.gpu, types["gpu_a100"])):
        assert ours.instance == theirs["node_config"]["InstanceType"]
    assert (config.nodes.cpu.cpus, config.nodes.gpu.cpus, config.nodes.gpu.gpus) == (
        types["cpu"]["resources"]["CPU"], types["gpu_a100"]["resources"]["CPU"], types["gpu_a100"]["resources"]["GPU"])
