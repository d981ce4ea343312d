"""SED supervised fine-tuning of Qwen2.5-Omni on Ray Train + DeepSpeed.

Locally (CPU, tiny model built on the fly, 2 workers over gloo):
    python jobs/train_sed.py --config jobs/configs/sft_demo.yaml
On a cluster:
    ray job submit --working-dir . -- python jobs/train_sed.py --config jobs/configs/sft_production.yaml \\
        data.sed=s3://bucket/saber/sed storage_path=s3://bucket/runs
A rerun with the same `name` and `storage_path` resumes from the latest checkpoint (step, optimizer, data
position). Any field can be overridden as key=value, e.g. `lora.enabled=true distributed.zero_stage=2`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.ops.launch import run_config_job  # noqa: E402
from train.core.config import SftConfig  # noqa: E402
from train.recipes.sft import run  # noqa: E402

CONFIG_HELP = "YAML config (jobs/configs/sft_demo.yaml, sft_production.yaml)"


def main(argv: list[str] | None = None) -> int:
    return run_config_job(__doc__, SftConfig, run, CONFIG_HELP, argv)


if __name__ == "__main__":
    sys.exit(main())
