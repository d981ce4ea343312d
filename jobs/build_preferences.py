"""CA-DPO preference data: sample K responses per query from the SFT model, judge, rank, pair (+ AVEm-DPO).

Locally (CPU, tiny thinker built on the fly; the demo's judge is a tiny random LM, so point `judge.backend`
at a real endpoint to get pairs):
    python jobs/build_preferences.py --config jobs/configs/prefs_demo.yaml
On a cluster:
    ray job submit --working-dir . -- python jobs/build_preferences.py \\
        --config jobs/configs/prefs_production.yaml engine_output=s3://bucket/saber output=s3://bucket/prefs/r1
A rerun with the same `output` and `round` skips every query already finished (no new samples, no judge
calls) and rebuilds summary.json and scores.png. Any field can be overridden as key=value, e.g.
`sampler_backend=vllm ranking.pairing=cross avem.enabled=true`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from engine.config import ConfigError, dump_config, load_config  # noqa: E402
from train.preferences.build import run  # noqa: E402
from train.preferences.config import PreferenceConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path,
                        help="YAML config (jobs/configs/prefs_demo.yaml, prefs_production.yaml)")
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(PreferenceConfig, args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("resolved config:\n%s", dump_config(config))
    ray.init(address=config.ray_address, ignore_reinit_error=True)
    summary = run(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
