"""Preference optimisation of the SED-tuned Qwen2.5-Omni thinker (CA-DPO or AVEm-DPO) on Ray Train + DeepSpeed.

Locally (CPU, tiny model, 2 workers over gloo; needs the demo SFT model and a preference table):
    python jobs/train_dpo.py --config jobs/configs/dpo_demo.yaml
On a cluster:
    ray job submit --working-dir . -- python jobs/train_dpo.py --config jobs/configs/dpo_production.yaml \\
        model.path=s3://bucket/runs/sed-sft/final data.preferences=s3://bucket/saber/preferences \\
        storage_path=s3://bucket/runs
    ray job submit --working-dir . -- python jobs/train_dpo.py --config jobs/configs/avem_production.yaml ...
The policy starts from `model.path` (the SFT run's final/ folder) and so does the frozen reference unless
`reference.path` says otherwise; `reference.mode` picks how its log-probs are computed (model | precomputed |
adapters_off). A rerun with the same `name` and `storage_path` resumes from the latest checkpoint. Any field can
be overridden as key=value, e.g. `loss.kind=avem lora.enabled=true reference.mode=adapters_off`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.ops.launch import run_config_job  # noqa: E402
from train.recipes.dpo import run  # noqa: E402
from train.recipes.dpo_config import DpoConfig  # noqa: E402

CONFIG_HELP = "YAML config (jobs/configs/dpo_demo.yaml, dpo_production.yaml, avem_production.yaml)"


def main(argv: list[str] | None = None) -> int:
    return run_config_job(__doc__, DpoConfig, run, CONFIG_HELP, argv)


if __name__ == "__main__":
    sys.exit(main())
