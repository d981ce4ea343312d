"""Capacity plan for a SABER build: node-hours, wall time and cost per stage (no Ray, no cloud calls).

    python jobs/plan.py --clips 600000
    python jobs/plan.py --clips 600000 --benchmark outputs/benchmarks/engine.json --json outputs/plan.json
    python jobs/plan.py --benchmark outputs/benchmarks/engine.json --benchmark outputs/benchmarks/models.json
    python jobs/plan.py --clips 600000 annotate.rate_limit_per_s=25 nodes.gpu.usd_per_hour=21.96 train.enabled=false

Defaults are the measured and assumed per-clip costs in engine/ops/capacity.py, each with its source; override any
of them as dotted key=value (or from a YAML file with --config) once a pilot run has measured the real numbers.
`--benchmark` takes measured throughputs instead of the fallback constants: the media chain's clips/s from a
`python jobs/benchmark.py engine` result (engine.json), the API stages' window efficiency (requests in flight over
max_concurrency, one slow answer per batch) from a `python jobs/benchmark.py models` result (models.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/plan.py` puts jobs/ on sys.path, not the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.config_base import ConfigError, load_config  # noqa: E402
from engine.ops.capacity import PlanConfig, plan  # noqa: E402
from engine.ops.capacity_io import format_plan, overrides_from_benchmark  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, help="input clips to plan for (default: 600000)")
    parser.add_argument("--config", type=Path, help="YAML file of PlanConfig fields overriding the defaults")
    parser.add_argument("--benchmark", type=Path, action="append", default=[],
                        help="a jobs/benchmark.py result (engine.json: media clips/s; models.json: API window "
                             "efficiency); may be given more than once")
    parser.add_argument("--json", type=Path, help="also write the plan and the resolved inputs as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value, e.g. asr.pass_rate=0.7")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        measured = [override for path in args.benchmark for override in overrides_from_benchmark(path)]
        config = load_config(PlanConfig, args.config, [*measured, *args.overrides], {"clips": args.clips})
    except (ConfigError, ValueError, OSError) as err:
        print(err, file=sys.stderr)
        return 2
    result = plan(config)
    print(format_plan(result, config))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"plan": result.as_dict(), "inputs": config.model_dump()}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
