"""jobs/evaluate.py and jobs/compare_results.py run the way users run them: as processes, each evaluation with its
own local Ray. The shipped configs validate; bad input exits with code 2 before Ray starts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.core.config import load_config
from tests.jobs.helpers import REPO, job_env
from train.evaluation.runner import EvalConfig

EVALUATE = [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--config", str(REPO / "jobs" / "configs" /
                                                                                "eval_demo.yaml")]
COMPARE = [sys.executable, str(REPO / "jobs" / "compare_results.py")]


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=job_env(), timeout=timeout, cwd=REPO)


def test_shipped_eval_configs_validate():
    demo = load_config(EvalConfig, REPO / "jobs" / "configs" / "eval_demo.yaml")
    assert (demo.benchmark, demo.model.path, demo.judge.backend.kind) == ("saber_test", "tiny:.cache/tiny_omni",
                                                                          "local")
    assert demo.folder == str(REPO / "outputs" / "results" / "saber_test" / "tiny_omni")
    production = load_config(EvalConfig, REPO / "jobs" / "configs" / "eval_production.yaml",
                             ["model.path=/shared/runs/sed-dpo/final", "generation.attention_reallocation=true"])
    assert production.folder == "s3://saber-bucket/results/saber_test/final-ar"
    assert production.answer_pool.num_gpus == 1 and production.judge.backend.http.model.startswith("gpt-4o")
    assert (production.media.max_frames, production.generation.temperature) == (40, 0.0)


def _evaluate_main():
    """jobs/evaluate.py's main, loaded from its file (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_bad_config_and_bad_manifest_exit_with_code_2_before_ray_starts(tmp_path, capsys, monkeypatch):
    main = _evaluate_main()
    monkeypatch.setattr("ray.init", lambda *a, **k: pytest.fail("Ray must not start for bad input"))
    config = str(REPO / "jobs" / "configs" / "eval_demo.yaml")
    assert main(["--config", config, "--benchmark", "nope", "generation.max_new_tokens=0"]) == 2
    assert "generation.max_new_tokens" in capsys.readouterr().err
    assert main(["--config", config, "--benchmark", "nope"]) == 2
    assert "benchmark: 'nope' is not one of" in capsys.readouterr().err
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"source_uri": "a.mp4", "label": "happy"}\n{"source_uri": "b.mp4", "label": "elated"}\n')
    assert main(["--config", config, "--benchmark", "ravdess", "--data", str(manifest), "judge.enabled=false"]) == 2
    assert "line 2: label 'elated' is not one of" in capsys.readouterr().err


def _ravdess_manifest(asr_set, path: Path) -> Path:
    folder, clips = asr_set
    names = sorted(c.name for c in clips if c.kind == "good")[:6]
    labels = ["happy", "sad", "angry", "happy", "calm", "neutral"]
    path.write_text("".join(json.dumps({"item_id": f"r{i}", "uri": str(folder / name), "label": label}) + "\n"
                            for i, (name, label) in enumerate(zip(names, labels, strict=True))))
    return path


@pytest.mark.slow
def test_evaluate_two_setups_then_compare_them(asr_set, tmp_path):
    manifest = _ravdess_manifest(asr_set, tmp_path / "ravdess.jsonl")
    common = ["--model", "tiny:" + str(REPO / ".cache" / "tiny_omni"), "--benchmark", "ravdess", "--data",
              str(manifest), "judge.enabled=false"]
    plain = _run([*EVALUATE, *common, "--out", str(tmp_path / "plain")])
    assert plain.returncode == 0, plain.stderr[-3000:]
    with_ar = _run([*EVALUATE, *common, "--out", str(tmp_path / "ar"), "generation.attention_reallocation=true"])
    assert with_ar.returncode == 0, with_ar.stderr[-3000:]
    for folder in ("plain", "ar"):
        summary = json.loads((tmp_path / folder / "summary.json").read_text())
        rows = pq.read_table(tmp_path / folder / "items.parquet").to_pylist()
        assert summary["counts"]["items"] == summary["counts"]["answered"] == len(rows) == 6
        # The tiny model answers noise, never {'emotion': ...}: every answer is a counted parse failure, and the
        # recognition metrics score them as wrong (UAR over the five classes present, WAR over six items).
        assert summary["counts"]["parse_failures"] == 6 and (summary["metrics"]["UAR"], summary["metrics"]["WAR"]
                                                             ) == (0.0, 0.0)
        assert {r["parse_error"].split(" ")[0] for r in rows} == {"no"}
        assert summary["references"][0]["columns"] == {"UAR": "RAVDESS/UAR", "WAR": "RAVDESS/WAR"}
        assert "| **tiny_omni" in (tmp_path / folder / "summary.md").read_text()
        assert (tmp_path / folder / "summary.png").stat().st_size > 10_000
    ar_config = json.loads((tmp_path / "ar" / "summary.json").read_text())["config"]
    assert ar_config["generation"]["attention_reallocation"] is True
    compared = _run([*COMPARE, str(tmp_path / "plain"), str(tmp_path / "ar"), "--labels", "plain", "ar",
                     "--out", str(tmp_path / "cmp")], timeout=120)
    assert compared.returncode == 0, compared.stderr[-3000:]
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| metric | plain | ar | ar − plain |" in text and "| UAR | 0.0000 | 0.0000 | +0.0000 |" in text
    assert "| count: parse_failures | 6 | 6 |" in text
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["benchmark"] == "ravdess"
    mixed = _run([*COMPARE, str(tmp_path / "plain"), str(tmp_path), "--out", str(tmp_path / "x")], timeout=120)
    assert mixed.returncode == 2 and "has no summary.json" in mixed.stderr
