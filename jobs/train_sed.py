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

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from engine.config import ConfigError, dump_config, load_config  # noqa: E402
from train.config import SftConfig  # noqa: E402
from train.recipes.sft import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config (jobs/configs/sft_demo.yaml, sft_production.yaml)")
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(SftConfig, args.config, args.overrides)
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
