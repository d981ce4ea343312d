"""A small build output and preference table for the export tests (the tables' real schemas, media as files)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.core.sed import SED_SCHEMA
from engine.dataset.holdout import TEST_SCHEMA
from train.preferences.schema import PREFERENCE_SCHEMA

SYSTEM = "You are an emotion analyst."
PROMPT = "What does the speaker feel? Give the visual evidence, the acoustic evidence and your reasoning."


def sed_row(clip: str, uri: str) -> dict:
    return {"clip_id": clip, "source_uri": uri, "source_video": clip, "dataset": "demo", "lang": "en",
            "system": SYSTEM, "prompt": PROMPT, "target": f"## Visual evidence\nsmile ({clip})", "format_version": "1"}


def pair_row(clip: str, uri: str, index: int) -> dict:
    row = dict.fromkeys(PREFERENCE_SCHEMA.names)
    return row | {"clip_id": clip, "source_uri": uri, "system": SYSTEM, "prompt": PROMPT, "round": 1,
                  "chosen": f"good answer {index} ({clip})", "rejected": f"bad answer {index} ({clip})",
                  "chosen_index": index, "rejected_index": 9 - index, "pair_id": f"{clip}-{index}"}


def write_tables(root: Path, media: dict[str, str], n_train: int = 3, n_test: int = 1) -> None:
    """`root/engine/{sed,saber_test}/` and `root/prefs/preferences/` over the clips of `media` (clip -> URI):
    the first n_train clips train, the next n_test test; two preference pairs for each training clip."""
    clips = list(media)
    train = [sed_row(c, media[c]) for c in clips[:n_train]]
    test = [sed_row(c, media[c]) | {"av_relation": "consistent", "av_intensity": 7}
            for c in clips[n_train:n_train + n_test]]
    pairs = [pair_row(c, media[c], i) for c in clips[:n_train] for i in (0, 1)]
    for folder, rows, schema in (("engine/sed", train, SED_SCHEMA), ("engine/saber_test", test, TEST_SCHEMA),
                                 ("prefs/preferences", pairs, PREFERENCE_SCHEMA)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / folder / "part-00000.parquet")


def media_files(folder: Path, n: int = 4) -> dict[str, str]:
    """n small files standing in for clips (the loaders read paths, not frames): clip id -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        path = folder / f"clip{i}.mp4"
        path.write_bytes(b"\0" * (100 + i))
        out[f"c{i}"] = str(path)
    return out
