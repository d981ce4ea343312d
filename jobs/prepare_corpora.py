"""Prepare the source corpora: read each corpus's own layout and write the manifest build_saber reads.

One --corpus/--root pair per corpus (a built-in name, or the path of a spec .yaml for a corpus of your own; see
engine/dataset/corpora/specs/README.md). All of them go into one manifest, with a report beside it
(<output stem>.report.json) that counts rows, skipped files (audio-only, video-only, unlabeled) and lists every
malformed entry (unknown emotion code, a label row without media, media without a label row, ...).

    python jobs/prepare_corpora.py --corpus meld --root /data/MELD.Raw --output manifests/meld.parquet
    python jobs/prepare_corpora.py --corpus ravdess --root s3://bucket/RAVDESS --corpus crema_d \
        --root s3://bucket/CREMA-D --output s3://bucket/saber/manifest.parquet
    python jobs/prepare_corpora.py --list
    python jobs/build_saber.py --config jobs/configs/production.yaml --input manifests/meld.parquet ...

Spec fields can be overridden as key=value (prefixed with the corpus name when several are given), e.g.
`meld.labels.files=[csv/*_sent_emo.csv]` or, for one corpus, `media.glob=[clips/*.mp4]`.
Exit status: 0 written (even with malformed entries: they are in the report), 2 bad arguments or spec,
1 a corpus could not be read at all (missing root).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

try:
    import engine  # noqa: F401
except ImportError:  # run as a plain script from a checkout: the repo root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.config_base import ConfigError  # noqa: E402
from engine.dataset.corpora import CorpusError, builtin_specs, load_spec, prepare_manifest, report_uri  # noqa: E402
from engine.dataset.corpora.spec import CorpusSpec  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", default=[],
                        help="built-in corpus name (see --list) or path of a spec .yaml; repeat for several")
    parser.add_argument("--root", action="append", default=[],
                        help="the corpus's folder or s3:// prefix, as downloaded; one per --corpus, same order")
    parser.add_argument("--output", help="manifest to write: .parquet, .jsonl or .csv, local or s3://")
    parser.add_argument("--sidecar-annotations", action="store_true",
                        help="a <clip stem>.json beside a clip is its SABER annotation (manifest annotation_uri)")
    parser.add_argument("--list", action="store_true", help="list the built-in corpus specs and exit")
    parser.add_argument("overrides", nargs="*", help="spec overrides as dotted key=value")
    return parser.parse_intermixed_args(argv)


def load_specs(corpora: list[str], overrides: list[str]) -> list[CorpusSpec]:
    """Each corpus's spec with its overrides: `name.key=value`, or `key=value` when only one corpus is given."""
    names = [Path(c).stem for c in corpora]
    per_corpus: dict[str, list[str]] = {name: [] for name in names}
    for pair in overrides:
        head, _, rest = pair.partition(".")
        if head in per_corpus and "=" in rest:
            per_corpus[head].append(rest)
        elif len(names) == 1:
            per_corpus[names[0]].append(pair)
        else:
            raise ConfigError(f"override {pair!r}: prefix it with one of {', '.join(names)}")
    return [load_spec(corpus, per_corpus[name]) for corpus, name in zip(corpora, names, strict=True)]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.list:
        for name in builtin_specs():
            spec = load_spec(name)
            print(f"{name:12s} {spec.dataset:12s} layout {spec.layout}")
        return 0
    if not args.corpus or len(args.corpus) != len(args.root) or not args.output:
        print("give --output and one --root per --corpus (in the same order)", file=sys.stderr)
        return 2
    try:
        specs = load_specs(args.corpus, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        report = prepare_manifest(list(zip(specs, args.root, strict=True)), args.output, args.sidecar_annotations)
    except (CorpusError, ConfigError) as err:
        print(err, file=sys.stderr)
        return 1
    summary = {name: {k: section[k] for k in ("rows", "skipped", "malformed", "speakers", "recordings")}
               for name, section in report["corpora"].items()}
    print(json.dumps(summary, indent=2))
    print(f"Manifest: {report['manifest']} ({report['rows']} rows); report: {report_uri(report['manifest'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
