"""The whole lifecycle in one command: build -> SED-SFT -> CA-DPO -> evaluation of SFT and DPO -> summary page.

Locally (CPU, the demo's tiny models; `make demo-lifecycle` makes the clips first):
    python jobs/lifecycle.py --clips .cache/demo_clips --output outputs/lifecycle
On a cluster, with the production configs:
    ray job submit --working-dir . -- python jobs/lifecycle.py --clips s3://bucket/clips --output /shared/life \\
        build_config=jobs/configs/production.yaml sft_config=jobs/configs/sft_production.yaml ...
Each step is the project's own job, run as a child process on one Ray cluster (this process starts a local one
when RAY_ADDRESS is unset); its log is OUT/logs/<step>.log. A rerun with the same --output skips the finished
steps and resumes the others. The page: OUT/summary/index.html (and summary.md), with the run's plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from engine.core.config import ConfigError, load_config  # noqa: E402
from engine.ops.launch import init_ray  # noqa: E402
from train.recipes.lifecycle import LifecycleConfig, StepFailed, is_done, plan, run_steps  # noqa: E402
from train.recipes.lifecycle_page import write_page  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", help="the source clips (folder, s3:// prefix or manifest)")
    parser.add_argument("--output", help="the lifecycle's folder (every step writes under it)")
    parser.add_argument("--rounds", type=int, help="CA-DPO rounds")
    parser.add_argument("overrides", nargs="*", help="LifecycleConfig fields as key=value (e.g. sft_config=...)")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(LifecycleConfig, None, args.overrides,
                             {"clips": args.clips, "output": args.output, "rounds": args.rounds})
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    os.chdir(REPO)  # the steps' configs and scripts are named relative to the repository root
    started = time.monotonic()
    steps = plan(config)
    # One local cluster for every step, instead of one start per step; none when every step is done already.
    if not os.environ.get("RAY_ADDRESS") and not all(is_done(config.output, step) for step in steps):
        init_ray(None)
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    try:
        results = run_steps(config, steps)
    except StepFailed as err:
        print(err, file=sys.stderr)
        write_page(config, err.results, time.monotonic() - started)
        return 1
    page = write_page(config, results, time.monotonic() - started)
    print(json.dumps({r.name: {"status": r.status, "seconds": r.seconds} for r in results}, indent=2))
    print(f"Summary page: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
