"""Benchmarks, each a ratio against a baseline run in the same process on the same data.

    python jobs/benchmark.py engine [--clips .cache/demo_clips] [--repeats 1] [key=value ...]

`engine`: clips/s and media-seconds/s of the engine's Ray Data plan (media stages, then media + ASR)
against a plain sequential Python loop running the same stage objects. Writes
outputs/benchmarks/engine.json and engine.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.benchmarking import benchmark_engine  # noqa: E402
from engine.config import EngineConfig, load_config  # noqa: E402
from engine.demo_data import generate_demo_set  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def plot(results: dict, path: Path) -> None:
    labels = [f"{r['stages']}\n(x{r['speedup']})" for r in results["runs"]]
    base = [r["baseline"]["clips_per_s"] for r in results["runs"]]
    engine = [r["engine"]["clips_per_s"] for r in results["runs"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], base, 0.4, label="sequential loop")
    ax.bar([x + 0.2 for x in xs], engine, 0.4, label="Ray Data engine")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("clips/s")
    ax.set_title(f"Engine throughput, {results['clips']} clips, {results['cpus']:.0f} CPUs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["engine"], help="what to benchmark")
    parser.add_argument("--clips", type=Path, default=REPO / ".cache" / "demo_clips",
                        help="clip folder; generated (the demo set) when missing")
    parser.add_argument("--config", type=Path, default=REPO / "jobs" / "configs" / "demo.yaml", help="engine config")
    parser.add_argument("--repeats", type=int, default=1, help="baseline/engine pairs per stage set")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks", help="where the JSON/PNG go")
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    args = parser.parse_intermixed_args(argv)
    if not args.clips.exists():
        generate_demo_set(args.clips)
    config = load_config(EngineConfig, args.config, args.overrides,
                         {"input": str(args.clips.resolve()), "output": str(args.out.resolve())})
    results = benchmark_engine(config, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "engine.png")
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out / 'engine.json'} and engine.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
