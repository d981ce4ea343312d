"""Build the SABER clip table: probe, decode, noise filter, ASR-WER check; writes clips/ and a report.

Run locally (starts a local Ray if none is running, without the dashboard unless SABER_RAY_DASHBOARD=1):
    python jobs/build_saber.py --config jobs/configs/demo.yaml
On a cluster (outputs should then be absolute paths on shared storage, or s3://):
    ray job submit --working-dir . -- python jobs/build_saber.py --config jobs/configs/production.yaml \
        --input s3://bucket/raw/ --output s3://bucket/saber/
Any config field can be overridden as key=value, e.g. `asr.max_wer=0.4 limit=100`.
A rerun with the same --output resumes: finished clips are skipped, never duplicated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/build_saber.py` puts jobs/ on sys.path, not the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.config import ConfigError, EngineConfig, load_config  # noqa: E402
from engine.dataset.build import run_build  # noqa: E402
from engine.ops.launch import dashboard_line, init_ray, starts_local_cluster  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config (jobs/configs/demo.yaml, production.yaml)")
    parser.add_argument("--input", help="folder, s3:// prefix, or manifest (.jsonl/.csv/.parquet) of clips")
    parser.add_argument("--output", help="output folder or s3:// prefix (clips/, report.json, report.png)")
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = load_config(EngineConfig, args.config, args.overrides, {"input": args.input, "output": args.output})
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    local = starts_local_cluster(config.ray_address)
    context = init_ray(config.ray_address)
    print(dashboard_line(context, local), flush=True)
    report = run_build(config, local_ray=local)
    summary = {k: report[k] for k in ("input", "kept", "rejected", "rejected_by_reason", "splits")}
    print(json.dumps(summary, indent=2))
    print(f"Outputs: {config.output if '://' in config.output else Path(config.output).resolve()}"
          " (clips/, sed/, saber_test/ when enabled, exports/, report.json, report.png, README.md: the "
          "dataset card, config.yaml; attempts/ when clips wait for a rerun)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
