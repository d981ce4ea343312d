"""Generates the synthetic demo clip set that `make demo` and the tests run the engine on.

Talking-face clips with espeak-ng speech and SABER sidecar annotations, plus planted bad files, each
recorded in <out>/expected.jsonl with the stage and reason the engine must reject it with. Needs the
`ffmpeg` and `espeak-ng` executables. A rerun with the same arguments is served from the cache.

    python jobs/make_demo_data.py                        # 48 good + 12 wrong-transcript + bad files
    python jobs/make_demo_data.py --out /tmp/clips --n-good 4 --n-wrong 2 --no-bad
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

try:
    import engine  # noqa: F401
except ImportError:  # run as a plain script from a checkout: the repo root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.devkit.demo_data import generate_demo_set  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/demo_clips"), help="output directory")
    parser.add_argument("--n-good", type=int, default=48, help="clips the engine must keep")
    parser.add_argument("--n-wrong", type=int, default=12, help="clips whose annotated transcript is wrong")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same set")
    parser.add_argument("--no-bad", action="store_true", help="skip the planted broken/unsuitable files")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    clips = generate_demo_set(args.out, args.n_good, args.n_wrong, seed=args.seed, with_bad=not args.no_bad)
    counts = ", ".join(f"{kind}={n}" for kind, n in Counter(c.kind for c in clips).items())
    print(f"{len(clips)} demo clips in {args.out.resolve()}: {counts}")


if __name__ == "__main__":
    main()
