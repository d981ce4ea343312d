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

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.ops.launch import run_config_job  # noqa: E402
from train.preferences.build import run  # noqa: E402
from train.preferences.config import PreferenceConfig  # noqa: E402

CONFIG_HELP = "YAML config (jobs/configs/prefs_demo.yaml, prefs_production.yaml)"


def main(argv: list[str] | None = None) -> int:
    return run_config_job(__doc__, PreferenceConfig, run, CONFIG_HELP, argv)


if __name__ == "__main__":
    sys.exit(main())
