"""CA-DPO end to end through the rounds driver: K=4 samples from a tiny thinker, a loopback judge, pairs,
then DPO on 2 CPU workers; the implicit reward margin on the training pairs rises, and a rerun of the loop
neither samples, judges nor trains again."""

import json
from collections import Counter

import numpy as np
import pytest

from engine.core.config_base import load_config
from engine.devkit.fake_openai import FakeOpenAI
from tests.conftest import RAY_TRAIN
from tests.train.test_build_preferences_job import Scripted, config_for, engine_output
from train.preferences.build import read_ledger
from train.preferences.schema import read_preferences
from train.recipes.ca_dpo import RoundsConfig, round_configs, run_rounds
from train.recipes.dpo_config import DpoConfig

LN2 = float(np.log(2))


def _dpo(storage):
    return load_config(DpoConfig, "jobs/configs/dpo_demo.yaml", [
        f"storage_path={storage}", "model.path=/placeholder", "data.max_frames=4", "optim.global_batch=2",
        "optim.lr=1e-3", "optim.epochs=3", "report_every=20", "checkpoint_every=100", "reference.mode=precomputed"])


def test_round_two_samples_from_round_ones_policy_and_keeps_the_sft_reference(tmp_path):
    prefs = config_for("/sft", tmp_path / "engine", tmp_path / "p", "http://127.0.0.1:1/v1")
    dpo = _dpo(tmp_path)
    rounds = RoundsConfig(rounds=2, output=str(tmp_path / "ca"))
    p2, d2 = round_configs(prefs, dpo, rounds, 2, "/ca/runs/r1/final", "/sft")
    assert (p2.sft_model, p2.round, p2.output) == ("/ca/runs/r1/final", 2, str(tmp_path / "ca" / "round2"))
    assert (d2.model.path, d2.reference.path, d2.name) == ("/ca/runs/r1/final", "/sft", "ca-dpo-demo-round2")
    assert d2.data.preferences == str(tmp_path / "ca" / "round2" / "preferences")
    _, previous = round_configs(prefs, dpo, rounds.model_copy(update={"reference": "previous"}), 2,
                                "/ca/runs/r1/final", "/sft")
    assert previous.reference.path == "/ca/runs/r1/final"


@pytest.mark.slow
@RAY_TRAIN
def test_sample_judge_pair_train_raises_the_margin_and_resumes(local_ray, tiny_omni, sed_records, tmp_path):
    engine, _, _ = engine_output(sed_records, tmp_path)
    script = Scripted({})  # every response scored from a hash of its text, no faults
    rounds = RoundsConfig(rounds=1, output=str(tmp_path / "ca"))
    with FakeOpenAI(responder=script) as server:
        prefs = config_for(tiny_omni, engine, tmp_path / "unused", server.url).model_copy(
            update={"avem": config_for(tiny_omni, engine, tmp_path, server.url).avem.model_copy(
                update={"enabled": False})})
        prefs = prefs.model_copy(update={"selection": prefs.selection.model_copy(update={"per_relation": 3})})
        history = run_rounds(prefs, _dpo(tmp_path), rounds)
        judged = dict(script.calls)
        script.calls.clear()
        again = run_rounds(prefs, _dpo(tmp_path), rounds)
        assert script.calls == Counter()  # nothing sampled or judged again

    (entry,) = history
    pairs = read_preferences(str(tmp_path / "ca" / "round1")).to_pylist()
    ledger = read_ledger(str(tmp_path / "ca" / "round1"), 1).to_pylist()
    # One judge call per response, except blank ones (the tiny sampler sometimes writes only special tokens).
    assert judged["judge"] == sum(bool(r.strip()) for q in ledger for r in q["responses"]) and len(ledger) == 6
    assert entry["pairs"] == len(pairs) >= 3
    rows = [json.loads(line) for line in open(f"{entry['run_dir']}/metrics.jsonl")]  # noqa: SIM115
    assert rows[0]["loss"] == pytest.approx(LN2, abs=1e-5)  # step 1: policy == reference
    margins, accuracy = [r["margin"] for r in rows], [r["accuracy"] for r in rows]
    half = len(rows) // 2
    assert np.mean(margins[half:]) > max(0.0, np.mean(margins[:half])), margins
    assert again[0]["policy"] == entry["policy"] and again[0]["pairs"] == entry["pairs"]
    assert json.loads((tmp_path / "ca" / "rounds.json").read_text())[0]["policy"] == entry["policy"]
    print(f"ca-dpo loop: {len(pairs)} pairs from 6 queries x K=4, {len(rows)} DPO steps, margins "
          f"{np.round(margins, 3).tolist()}, accuracy {np.round(accuracy, 2).tolist()}")


def test_launcher_routes_prefixed_overrides_and_rejects_others(capsys):
    import importlib.util

    from tests.jobs.helpers import REPO

    spec = importlib.util.spec_from_file_location("run_ca_dpo", REPO / "jobs" / "run_ca_dpo.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    assert launcher.split_overrides(["prefs.round=2", "dpo.loss.beta=0.2", "rounds.reference=previous"]) == {
        "prefs": ["round=2"], "dpo": ["loss.beta=0.2"], "rounds": ["reference=previous"]}
    code = launcher.main(["--prefs", "jobs/configs/prefs_demo.yaml", "--dpo", "jobs/configs/dpo_demo.yaml",
                          "--output", "/tmp/x", "beta=0.2"])
    assert code == 2 and "must start with prefs., dpo. or rounds." in capsys.readouterr().err
