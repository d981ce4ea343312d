"""The lifecycle runner (train.recipes.lifecycle) with a scripted child runner, and its summary page on a hand-made
output tree: which steps run, which are skipped on a rerun, what a failure stops, and the figures the page shows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from train.recipes.lifecycle import LifecycleConfig, StepFailed, layout, plan, run_steps
from train.recipes.lifecycle_page import write_page


class Children:
    """A runner that records each command and exits with the scripted status (0 unless told otherwise)."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.calls: list[str] = []
        self.fail = set(fail)

    def __call__(self, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> int:
        name = {"build_saber.py": "build", "train_sed.py": "sft", "run_ca_dpo.py": "ca_dpo",
                "compare_results.py": "compare"}.get(Path(argv[0]).name)
        if name is None:  # evaluate.py: the --out folder says which model
            name = "eval_sft" if argv[argv.index("--out") + 1].endswith("/sft") else "eval_dpo"
        self.calls.append(name)
        log_path.write_text(f"ran {name}\n")
        return 1 if name in self.fail else 0


@pytest.fixture
def config(tmp_path: Path) -> LifecycleConfig:
    return LifecycleConfig(output=str(tmp_path / "life"), clips="clips")


def _dpo_final(config: LifecycleConfig) -> None:
    final = Path(layout(config)["dpo_final"])
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")


def test_plan_chains_each_step_on_the_previous_steps_outputs(config: LifecycleConfig) -> None:
    steps = {s.name: s for s in plan(config)}
    assert list(steps) == ["build", "sft", "ca_dpo", "eval_sft", "eval_dpo", "compare"]
    out = config.output
    assert steps["build"].argv[-2:] == ["--output", f"{out}/build"]
    assert f"data.sed={out}/build/sed" in steps["sft"].argv
    assert f"prefs.sft_model={out}/runs/sed-sft-demo/final" in steps["ca_dpo"].argv
    assert f"prefs.engine_output={out}/build" in steps["ca_dpo"].argv
    assert steps["eval_dpo"].argv[steps["eval_dpo"].argv.index("--model") + 1] == \
        f"{out}/ca_dpo/runs/ca-dpo-demo-round1/final"
    assert steps["eval_sft"].argv[steps["eval_sft"].argv.index("--data") + 1] == f"{out}/build/saber_test"
    two_rounds = {s.name: s for s in plan(config.model_copy(update={"rounds": 2}))}
    assert "ca-dpo-demo-round2/final" in " ".join(two_rounds["eval_dpo"].argv)


def test_a_rerun_skips_finished_steps_and_runs_a_changed_one(config: LifecycleConfig) -> None:
    _dpo_final(config)
    first = Children()
    results = run_steps(config, plan(config), runner=first)
    assert first.calls == ["build", "sft", "ca_dpo", "eval_sft", "eval_dpo", "compare"]
    assert [r.status for r in results] == ["done"] * 6

    again = Children()
    assert [r.status for r in run_steps(config, plan(config), runner=again)] == ["skipped"] * 6
    assert again.calls == []

    changed = config.model_copy(update={"eval_config": "jobs/configs/eval_other.yaml"})
    third = Children()
    run_steps(changed, plan(changed), runner=third)
    assert third.calls == ["eval_sft", "eval_dpo"]


def test_an_edited_config_file_runs_its_steps_again(config: LifecycleConfig, tmp_path: Path) -> None:
    _dpo_final(config)
    prefs = tmp_path / "prefs.yaml"
    prefs.write_text("round: 1\n")
    config = config.model_copy(update={"prefs_config": str(prefs)})
    run_steps(config, plan(config), runner=Children())
    unchanged = Children()
    run_steps(config, plan(config), runner=unchanged)
    assert unchanged.calls == []
    prefs.write_text("round: 1\nselection: {balanced: false}\n")
    edited = Children()
    run_steps(config, plan(config), runner=edited)
    assert edited.calls == ["ca_dpo"]


def test_a_failed_step_stops_the_run_and_is_run_again_next_time(config: LifecycleConfig) -> None:
    _dpo_final(config)
    broken = Children(fail=["ca_dpo"])
    with pytest.raises(StepFailed) as caught:
        run_steps(config, plan(config), runner=broken)
    assert broken.calls == ["build", "sft", "ca_dpo"]  # nothing ran on the missing DPO model
    assert caught.value.result.name == "ca_dpo" and caught.value.result.returncode == 1
    assert [r.name for r in caught.value.results] == ["build", "sft", "ca_dpo"]
    assert not (Path(config.output) / "steps" / "ca_dpo.json").exists()

    fixed = Children()
    run_steps(config, plan(config), runner=fixed)
    assert fixed.calls == ["ca_dpo", "eval_sft", "eval_dpo", "compare"]


def test_evaluating_a_dpo_model_that_was_never_trained_fails_with_the_reason(config: LifecycleConfig) -> None:
    children = Children()
    with pytest.raises(StepFailed) as caught:
        run_steps(config, plan(config), runner=children)
    assert children.calls == ["build", "sft", "ca_dpo", "eval_sft"]
    assert caught.value.result.name == "eval_dpo"
    assert "rounds.json" in Path(caught.value.result.log).read_text()


def test_an_unreadable_marker_runs_its_step_again(config: LifecycleConfig) -> None:
    _dpo_final(config)
    run_steps(config, plan(config), runner=Children())
    (Path(config.output) / "steps" / "sft.json").write_text("{not json")
    children = Children()
    run_steps(config, plan(config), runner=children)
    assert children.calls == ["sft"]


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")


def test_the_summary_page_shows_each_steps_figures(config: LifecycleConfig) -> None:
    paths = layout(config)
    _write(Path(paths["build"]) / "report.json", {
        "input": 71, "kept": 48, "rejected": 23, "rejected_by_stage": {"probe": 5, "asr": 18},
        "retry": {"pending": 0, "gave_up": 0},
        "splits": {"sed_train": 40, "saber_test": {"consistent": 8}, "groups": {"by": ["source_video"]}}})
    _png(Path(paths["build"]) / "report.png")
    _write(Path(paths["sft_run"]) / "metrics.jsonl", '{"step": 1, "loss": 9.5}\n{"step": 80, "loss": 2.25}\n')
    _png(Path(paths["sft_run"]) / "loss.png")
    prefs = Path(paths["ca_dpo"]) / "round1"
    dpo_run = Path(paths["dpo_run"])
    _write(Path(paths["ca_dpo"]) / "rounds.json", [{"round": 1, "pairs": 24, "preferences": str(prefs),
                                                    "run_dir": str(dpo_run)}])
    _write(prefs / "summary.json", {"queries": {"total": 16}, "responses": {"judged": 64, "judge_failures": {}}})
    _write(dpo_run / "metrics.jsonl", '{"step": 12, "loss": 0.61, "margin": 0.35, "accuracy": 0.75}\n')
    _png(dpo_run / "loss.png")
    _write(Path(paths["eval_sft"]) / "summary.json", {"counts": {"items": 8, "judged": 8}})
    _write(Path(paths["compare"]) / "comparison.md",
           "# saber_test: SFT vs CA-DPO\n\n| metric | SFT | CA-DPO |\n|---|---|---|\n| mean | 1.5 | 1.75 |\n")

    page = write_page(config, [], 123.0)
    text = page.read_text()
    for expected in ("<td>kept</td><td>48</td>", "<td>rejected at asr</td><td>18</td>",
                     "<td>split saber_test.consistent</td><td>8</td>", "<td>last loss</td><td>2.25</td>",
                     "<tr><td>mean</td><td>1.5</td><td>1.75</td></tr>", "tiny and random",
                     "<td>round 1 pairs per query</td><td>1.5</td>", "<td>round 1 last accuracy</td><td>0.75</td>",
                     "<td>SFT items</td><td>8</td>"):
        assert expected in text, expected
    assert "split groups" not in text and "---" not in text  # only the chosen split rows; no table rule as a row
    summary = Path(paths["summary"])
    assert {p.name for p in summary.glob("*.png")} == {"funnel.png", "sft_loss.png", "round1_dpo.png"}
    # what no step wrote is named, not silently left out
    assert f"missing: {paths['eval_dpo']}/summary.json" in text
    assert f"missing: {prefs}/scores.png" in text
    markdown = (summary / "summary.md").read_text()
    assert "| round 1 pairs per query | 1.5 |" in markdown and "| mean | 1.5 | 1.75 |" in markdown
    assert "\n### saber_test: SFT vs CA-DPO" in markdown  # the comparison's heading under the section's
