"""CA-DPO rounds: sample -> judge-rank -> pairs -> DPO, R times, each round's policy sampling the next.

Round r writes `OUT/round<r>/preferences/` (train.preferences) and trains `OUT/runs/<name>-round<r>`
(train.recipes.dpo) from the current policy. The reference stays the frozen SFT model in every round
(SABER-LLM Eq. 3) unless `reference: previous` makes each round's starting policy its reference. A rerun
resumes: finished preference queries are skipped, a round whose final model exists is not trained again, and
an interrupted DPO run restarts from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field

from engine.core import storage
from engine.core.config_base import ConfigSection
from train.preferences.config import PreferenceConfig
from train.recipes.dpo_config import DpoConfig

log = logging.getLogger(__name__)


class RoundsConfig(ConfigSection):
    rounds: int = Field(1, ge=1)
    output: str = ""
    reference: Literal["sft", "previous"] = "sft"
    # A round whose preference build keeps fewer pairs than this ends the loop (nothing to learn from).
    min_pairs: int = Field(1, ge=1)


def round_configs(prefs: PreferenceConfig, dpo: DpoConfig, rounds: RoundsConfig, r: int, policy: str,
                  sft: str) -> tuple[PreferenceConfig, DpoConfig]:
    """Round r's two configs: the preference build samples from `policy`, DPO starts from it."""
    base = storage.join(storage.absolute(rounds.output), f"round{r}")
    round_prefs = prefs.model_copy(update={"sft_model": policy, "round": r, "output": base})
    reference = sft if rounds.reference == "sft" else policy
    round_dpo = dpo.model_copy(update={
        "name": f"{dpo.name}-round{r}",
        "storage_path": storage.join(storage.absolute(rounds.output), "runs"),
        "model": dpo.model.model_copy(update={"path": policy}),
        "reference": dpo.reference.model_copy(update={"path": reference}),
        "data": dpo.data.model_copy(update={"preferences": storage.join(base, "preferences")}),
    })
    return round_prefs, round_dpo


def final_exists(run_dir: str) -> bool:
    fs = storage.filesystem(run_dir)
    return fs.exists(f"{storage.strip_protocol(run_dir)}/final/config.json")


def run_rounds(prefs: PreferenceConfig, dpo: DpoConfig, rounds: RoundsConfig) -> list[dict[str, Any]]:
    from train.core.modeling import resolve_model_path
    from train.preferences.build import run as build_preferences
    from train.recipes.dpo import run as train_dpo

    sft = resolve_model_path(prefs.sft_model)
    policy, history = sft, []
    for r in range(1, rounds.rounds + 1):
        round_prefs, round_dpo = round_configs(prefs, dpo, rounds, r, policy, sft)
        summary = build_preferences(round_prefs)
        pairs = summary["pairs"]["kept"]
        entry: dict[str, Any] = {"round": r, "sampler": policy, "pairs": pairs, "preferences": round_prefs.output}
        if pairs < rounds.min_pairs:
            log.warning("[ca_dpo] round %d kept %d pairs (< %d): stopping", r, pairs, rounds.min_pairs)
            history.append({**entry, "stopped": "too_few_pairs"})
            break
        run_dir = storage.join(round_dpo.storage_path, round_dpo.name)
        if final_exists(run_dir):
            log.info("[ca_dpo] round %d already trained: %s", r, run_dir)
            result = {"final_model": storage.join(run_dir, "final"), "run_dir": run_dir}
        else:
            result = train_dpo(round_dpo)
        policy = result["final_model"]
        history.append({**entry, "policy": policy, "run_dir": result["run_dir"], "metrics": result.get("metrics")})
        write_history(rounds.output, history)
    write_history(rounds.output, history)
    return history


def write_history(output: str, history: list[dict[str, Any]]) -> None:
    fs = storage.filesystem(output)
    base = storage.strip_protocol(storage.absolute(output))
    fs.makedirs(base, exist_ok=True)
    fs.pipe_file(f"{base}/rounds.json", json.dumps(history, indent=2, default=str).encode())
