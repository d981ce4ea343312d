"""Compare two or more evaluation result folders of one benchmark side by side (e.g. SFT vs DPO, AR off vs on).

    python jobs/compare_results.py results/saber_test/sft results/saber_test/dpo --out results/saber_test/sft-vs-dpo
Writes comparison.md (a table with each run's difference to the first), comparison.png (grouped bars of the
headline metrics) and comparison.json into --out. Folders may be local or s3://.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core import storage  # noqa: E402
from train.evaluation.report import compare, comparison_markdown, write_comparison  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="result folders (each holds a summary.json)")
    parser.add_argument("--out", required=True, help="folder for comparison.md, comparison.png, comparison.json")
    parser.add_argument("--labels", nargs="+", help="one label per folder (default: the model names)")
    args = parser.parse_args(argv)
    try:
        comparison = compare([storage.absolute(f) for f in args.folders], args.labels)
    except (ValueError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    write_comparison(storage.absolute(args.out), comparison)
    print(comparison_markdown(comparison))
    print(f"Comparison: {storage.absolute(args.out)} (comparison.md, comparison.png, comparison.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
