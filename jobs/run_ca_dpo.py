"""CA-DPO for R rounds: sample K responses from the policy, judge and rank them, pair, train DPO; repeat.

Locally (CPU, tiny thinker; point the judge at an endpoint to get pairs, the demo's tiny judge writes noise):
    python jobs/run_ca_dpo.py --prefs jobs/configs/prefs_demo.yaml --dpo jobs/configs/dpo_demo.yaml \\
        --rounds 2 --output outputs/ca_dpo prefs.judge.backend.http.base_url=http://127.0.0.1:8000/v1
On a cluster:
    ray job submit --working-dir . -- python jobs/run_ca_dpo.py --prefs jobs/configs/prefs_production.yaml \\
        --dpo jobs/configs/dpo_production.yaml --rounds 3 --output s3://bucket/ca_dpo \\
        prefs.engine_output=s3://bucket/saber prefs.sft_model=s3://bucket/runs/sed-sft/final
Overrides are dotted key=value with a prefix naming the config: `prefs.`, `dpo.` or `rounds.` (e.g.
`rounds.reference=previous dpo.optim.max_steps=10`). A rerun with the same --output resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.config import ConfigError, load_config  # noqa: E402
from engine.ops.launch import init_ray  # noqa: E402
from train.preferences.config import PreferenceConfig  # noqa: E402
from train.recipes.ca_dpo import RoundsConfig, run_rounds  # noqa: E402
from train.recipes.dpo_config import DpoConfig  # noqa: E402

PREFIXES = ("prefs.", "dpo.", "rounds.")


def split_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """`prefs.a.b=1 dpo.c=2` -> {"prefs": ["a.b=1"], "dpo": ["c=2"], "rounds": []}; anything else is an error."""
    out: dict[str, list[str]] = {p[:-1]: [] for p in PREFIXES}
    bad = [o for o in overrides if not o.startswith(PREFIXES)]
    if bad:
        raise ConfigError(f"overrides must start with prefs., dpo. or rounds.: {bad}")
    for item in overrides:
        prefix, rest = item.split(".", 1)
        out[prefix].append(rest)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefs", type=Path, required=True, help="preference-building YAML (prefs_*.yaml)")
    parser.add_argument("--dpo", type=Path, required=True, help="DPO training YAML (dpo_*.yaml or avem_*.yaml)")
    parser.add_argument("--rounds", type=int, help="number of sample -> rank -> train rounds")
    parser.add_argument("--output", help="folder or s3:// prefix for every round's preferences and runs")
    parser.add_argument("overrides", nargs="*", help="prefs.KEY=VALUE, dpo.KEY=VALUE or rounds.KEY=VALUE")
    args = parser.parse_intermixed_args(argv)
    try:
        split = split_overrides(args.overrides)
        rounds = load_config(RoundsConfig, None, split["rounds"], {"rounds": args.rounds, "output": args.output})
        if not rounds.output:
            raise ConfigError("--output (or rounds.output=...) is required")
        # Placeholders for the fields every round sets itself (sampler, output, policy, data).
        prefs = load_config(PreferenceConfig, args.prefs, split["prefs"], {"output": rounds.output})
        dpo = load_config(DpoConfig, args.dpo, split["dpo"], {"storage_path": rounds.output})
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    init_ray(prefs.ray_address)
    print(json.dumps(run_rounds(prefs, dpo, rounds), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
