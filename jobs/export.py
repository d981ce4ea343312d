"""Exports for ms-swift and LLaMA-Factory: the SED splits of a build and/or a preference table, with local media.

    python jobs/export.py --engine-output OUT --preferences PREFS --output exports/ --media-dir /data/media
    python jobs/export.py --preferences s3://bucket/prefs/r1 --output exports/ \\
        --media-map s3://bucket/raw/=/mnt/raw/
Writes `OUTPUT/ms_swift/*.jsonl` and `OUTPUT/llama_factory/*.jsonl` + `dataset_info.json` (layouts and the audio
convention: engine/dataset/exports.py): `saber_train` (sed/) and `saber_test` (saber_test/) from --engine-output,
`saber_preferences` (ranking: chosen/rejected) from --preferences. Empty datasets are neither written nor listed.

The build writes the SED exports itself (OUT/exports/) with the media URIs as found; this command is for the
training machine: neither framework opens `s3://`, so each remote URI is either mapped to a mounted path
(--media-map, repeatable, every mapped file must exist) or downloaded under --media-dir (resumable: files
already there with the remote size are skipped). A remote URI that neither covers is an error. Run it where the
trainer runs (paths written are that machine's); the preference job stays free of training-side paths.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core import storage  # noqa: E402
from engine.core.sed import SED_SCHEMA  # noqa: E402
from engine.dataset import exports  # noqa: E402
from engine.dataset.exports_media import localise, parse_mapping  # noqa: E402
from engine.dataset.holdout import TEST_SCHEMA  # noqa: E402
from engine.dataset.writer import read_parts  # noqa: E402
from train.preferences.schema import read_preferences  # noqa: E402

PREFERENCES = "saber_preferences"


def read_datasets(engine_output: str | None, preferences: str | None, round_: int | None) -> dict[str, list[dict]]:
    datasets: dict[str, list[dict]] = {}
    if engine_output:
        datasets["saber_train"] = read_parts(storage.join(engine_output, "sed"), SED_SCHEMA).to_pylist()
        datasets["saber_test"] = read_parts(storage.join(engine_output, "saber_test"), TEST_SCHEMA).to_pylist()
    if preferences:
        datasets[PREFERENCES] = read_preferences(preferences, round_).to_pylist()
    return datasets


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-output", help="a build_saber output (sed/, saber_test/), local or s3://")
    parser.add_argument("--preferences", help="a build_preferences output (preferences/), local or s3://")
    parser.add_argument("--round", type=int, help="only this preference round (default: every pair in the table)")
    parser.add_argument("--output", required=True, help="export folder (ms_swift/, llama_factory/)")
    parser.add_argument("--media-dir", help="download remote media here (resumable) and write these paths")
    parser.add_argument("--media-map", action="append", default=[], metavar="PREFIX=PATH",
                        help="write PATH+rest for media under PREFIX (a mounted bucket), e.g. s3://b/raw/=/mnt/raw/")
    args = parser.parse_args(argv)
    if not (args.engine_output or args.preferences):
        parser.error("give --engine-output, --preferences or both")
    try:
        mappings = dict(parse_mapping(m) for m in args.media_map)
        datasets = read_datasets(args.engine_output, args.preferences, args.round)
        uris = [r["source_uri"] for records in datasets.values() for r in records]
        media = localise(uris, mappings, args.media_dir)
        counts = exports.write_exports(args.output, datasets, frozenset({PREFERENCES}), media)
    except ValueError as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"rows": counts, "media": {"downloaded": media.downloaded, "already_there": media.skipped,
                                                "mapped": media.mapped}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
