"""The whole lifecycle as one resumable run: build -> SED-SFT -> CA-DPO (sample, judge, pair, train) -> evaluation
of the SFT and the DPO model -> side-by-side comparison -> summary page.

Each step is one of the project's own jobs (`jobs/*.py`), run as a child process with the same Python, so a step
runs exactly as a user would run it by hand and its memory is returned when it ends. A step that exits 0 leaves
a marker `OUT/steps/<step>.json` (its command, seconds, finish time); a rerun skips the steps whose marker holds
the same command and runs the others, each of which resumes by itself (the build skips finished clips, training
restarts from its last checkpoint, evaluation answers only what is missing). A step that fails stops the run
with its log's path; nothing after it runs on a half-made input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field

from engine.core.config_base import ConfigSection

log = logging.getLogger(__name__)


class LifecycleConfig(ConfigSection):
    """Where the lifecycle reads and writes, and which job configs each step takes."""

    clips: str = ".cache/demo_clips"
    output: str = "outputs/lifecycle"
    build_config: str = "jobs/configs/demo_full.yaml"
    sft_config: str = "jobs/configs/sft_demo.yaml"
    prefs_config: str = "jobs/configs/prefs_demo.yaml"
    dpo_config: str = "jobs/configs/dpo_demo.yaml"
    eval_config: str = "jobs/configs/eval_demo.yaml"
    rounds: int = Field(1, ge=1)
    sft_name: str = "sed-sft-demo"  # the SFT config's `name`: its final model is OUT/runs/<sft_name>/final
    dpo_name: str = "ca-dpo-demo"  # the DPO config's `name`: round r trains OUT/ca_dpo/runs/<dpo_name>-round<r>


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]  # after the Python executable: the job script and its arguments
    title: str = ""
    needs: str = ""  # a path an earlier step must have made; missing, the step fails with `needs_why`
    needs_why: str = ""


@dataclass
class StepResult:
    name: str
    status: str  # done | skipped | failed
    seconds: float
    log: str
    returncode: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class StepFailed(RuntimeError):
    """A step that failed; `results` holds every step of the run up to it (for the page of a stopped run)."""

    def __init__(self, result: StepResult, results: Sequence[StepResult]) -> None:
        super().__init__(f"step {result.name} failed (exit {result.returncode}); its log: {result.log}")
        self.result = result
        self.results = [*results, result]


def layout(config: LifecycleConfig) -> dict[str, str]:
    """Every folder the steps write, relative to nothing: all under `config.output`."""
    out = config.output.rstrip("/")
    last = f"{out}/ca_dpo/runs/{config.dpo_name}-round{config.rounds}"
    return {"build": f"{out}/build", "runs": f"{out}/runs", "sft_final": f"{out}/runs/{config.sft_name}/final",
            "sft_run": f"{out}/runs/{config.sft_name}", "ca_dpo": f"{out}/ca_dpo", "dpo_run": last,
            "dpo_final": f"{last}/final", "eval_sft": f"{out}/eval/sft", "eval_dpo": f"{out}/eval/dpo",
            "compare": f"{out}/eval/sft-vs-dpo", "summary": f"{out}/summary"}


def plan(config: LifecycleConfig) -> list[Step]:
    """The steps in order, each a job command line (relative paths resolve from the repository root)."""
    paths = layout(config)
    evaluate = ["jobs/evaluate.py", "--config", config.eval_config, "--benchmark", "saber_test",
                "--data", f"{paths['build']}/saber_test"]
    return [
        Step("build", ["jobs/build_saber.py", "--config", config.build_config, "--input", config.clips,
                       "--output", paths["build"]], "SABER build (media, ASR, annotation, judges)"),
        Step("sft", ["jobs/train_sed.py", "--config", config.sft_config, f"data.sed={paths['build']}/sed",
                     f"storage_path={paths['runs']}", f"name={config.sft_name}"], "SED supervised fine-tuning"),
        Step("ca_dpo", ["jobs/run_ca_dpo.py", "--prefs", config.prefs_config, "--dpo", config.dpo_config,
                        "--rounds", str(config.rounds), "--output", paths["ca_dpo"],
                        f"prefs.engine_output={paths['build']}", f"prefs.sft_model={paths['sft_final']}",
                        f"dpo.name={config.dpo_name}"], "CA-DPO: sample K, judge, pair, DPO"),
        Step("eval_sft", [*evaluate, "--model", paths["sft_final"], "--out", paths["eval_sft"]],
             "SABER-Test: the SFT model"),
        Step("eval_dpo", [*evaluate, "--model", paths["dpo_final"], "--out", paths["eval_dpo"]],
             "SABER-Test: the DPO model", needs=f"{paths['dpo_final']}/config.json",
             needs_why=f"CA-DPO trained no final model (too few pairs?): see {paths['ca_dpo']}/rounds.json"),
        Step("compare", ["jobs/compare_results.py", paths["eval_sft"], paths["eval_dpo"], "--labels", "SFT",
                         "CA-DPO", "--out", paths["compare"]], "SFT vs CA-DPO"),
    ]


Runner = Callable[[Sequence[str], Path, dict[str, str]], int]


def run_child(argv: Sequence[str], log_path: Path, env: dict[str, str]) -> int:
    """`python ARGV` with stdout and stderr into `log_path`; its exit status."""
    with log_path.open("ab") as sink:
        return subprocess.run([sys.executable, *argv], stdout=sink, stderr=subprocess.STDOUT, env=env,
                              check=False).returncode


def marker_path(out: str, step: str) -> Path:
    return Path(out) / "steps" / f"{step}.json"


def config_hashes(step: Step) -> dict[str, str]:
    """sha1 of each config file the command names: an edited YAML changes the step as much as a new argument."""
    files = [a for a in step.argv if a.endswith((".yaml", ".yml", ".json")) and Path(a).is_file()]
    return {name: hashlib.sha1(Path(name).read_bytes()).hexdigest() for name in files}


def is_done(out: str, step: Step) -> bool:
    """A step is done when its marker exists and names the same command and config files (else it runs again)."""
    path = marker_path(out, step.name)
    if not path.exists():
        return False
    try:
        marker = json.loads(path.read_text())
        return marker["argv"] == step.argv and marker["configs"] == config_hashes(step)
    except (ValueError, KeyError, TypeError):  # an unreadable marker is not a finished step: run it again
        log.warning("[lifecycle] unreadable marker %s: running %s again", path, step.name)
        return False


def run_steps(config: LifecycleConfig, steps: Sequence[Step], runner: Runner = run_child,
              env: dict[str, str] | None = None) -> list[StepResult]:
    """Runs the steps not yet done, in order; raises StepFailed at the first that fails."""
    out = config.output
    (Path(out) / "steps").mkdir(parents=True, exist_ok=True)
    (Path(out) / "logs").mkdir(parents=True, exist_ok=True)
    results = []
    for index, step in enumerate(steps, 1):
        log_path = Path(out) / "logs" / f"{step.name}.log"
        if is_done(out, step):
            previous = json.loads(marker_path(out, step.name).read_text())
            log.info("[lifecycle] %d/%d %s: done before (%.0f s), skipped", index, len(steps), step.name,
                     previous["seconds"])
            results.append(StepResult(step.name, "skipped", previous["seconds"], str(log_path)))
            continue
        if step.needs and not Path(step.needs).exists():
            log_path.write_text(f"{step.needs} is missing. {step.needs_why}\n")
            raise StepFailed(StepResult(step.name, "failed", 0.0, str(log_path), returncode=2), results)
        log.info("[lifecycle] %d/%d %s: %s (log: %s)", index, len(steps), step.name, step.title, log_path)
        start = time.monotonic()
        code = runner(step.argv, log_path, dict(env if env is not None else os.environ))
        seconds = round(time.monotonic() - start, 1)
        result = StepResult(step.name, "done" if code == 0 else "failed", seconds, str(log_path), code)
        if code != 0:
            raise StepFailed(result, results)
        marker = {"step": step.name, "argv": step.argv, "configs": config_hashes(step), "seconds": seconds,
                  "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        marker_path(out, step.name).write_text(json.dumps(marker, indent=2))
        log.info("[lifecycle] %d/%d %s: done in %.0f s", index, len(steps), step.name, seconds)
        results.append(result)
    return results
