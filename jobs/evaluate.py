"""Evaluate a model on a benchmark manifest: answers in a Ray Data actor pool, a judge pool when the benchmark
is judged, then per-item Parquet, summary.json, a markdown table and a chart beside the papers' numbers.

Locally (CPU, tiny Omni thinker, a tiny judge; starts a local Ray if none is running):
    python jobs/evaluate.py --config jobs/configs/eval_demo.yaml
    python jobs/evaluate.py --config jobs/configs/eval_demo.yaml --benchmark ca_mer --data camer.jsonl \\
        generation.attention_reallocation=true
On a cluster:
    ray job submit --working-dir . -- python jobs/evaluate.py --config jobs/configs/eval_production.yaml \\
        --model /shared/runs/sed-dpo/final --benchmark saber_test --data s3://bucket/saber/saber_test
Results go to OUTPUT_ROOT/<benchmark>/<model name>/ (or --out). A rerun into the same folder answers and judges
only what is missing. Benchmarks: saber_test, emer, emobench_m, dfew, ravdess, mer2023, ca_mer, emoreaim
(manifest fields: train/evaluation/benchmarks.py). Compare folders with jobs/compare_results.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/evaluate.py` puts jobs/ on sys.path, not the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.config import ConfigError, dump_config, load_config  # noqa: E402
from engine.ops.launch import init_ray  # noqa: E402
from train.evaluation.benchmarks import get_benchmark  # noqa: E402
from train.evaluation.manifests import ManifestError, load_items  # noqa: E402
from train.evaluation.runner import EvalConfig, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config (jobs/configs/eval_demo.yaml, eval_production.yaml)")
    parser.add_argument("--model", help="checkpoint folder, hub id or tiny:DIR (sets model.path and model.kind)")
    parser.add_argument("--benchmark", help="benchmark name, e.g. saber_test, ca_mer, emobench_m")
    parser.add_argument("--data", help="benchmark manifest: .jsonl, .parquet or a folder of Parquet parts (or s3://)")
    parser.add_argument("--out", help="result folder (default OUTPUT_ROOT/<benchmark>/<model name>)")
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    model = {"kind": "checkpoint", "path": args.model} if args.model else None
    cli = {"benchmark": args.benchmark, "data": args.data, "output": args.out, "model": model}
    try:
        config = load_config(EvalConfig, args.config, args.overrides, cli)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("resolved config:\n%s", dump_config(config))
    try:  # a bad manifest is reported before Ray starts
        items = load_items(config.data, get_benchmark(config.benchmark), config.limit)
    except ManifestError as err:
        print(err, file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("%d %s items in %s", len(items), config.benchmark, config.data)
    init_ray(config.ray_address)
    summary = run(config)
    print(json.dumps({k: summary[k] for k in ("benchmark", "model", "counts", "metrics", "run")}, indent=2))
    print(f"Results: {config.folder} (items.parquet, summary.json, summary.md, summary.png, config.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
