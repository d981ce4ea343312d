"""The evaluation harness: benchmarks and their manifests (`benchmarks`, `manifests`), prompts, answer parsers
(`parsers`), judges (`judging`), metrics (`metrics`, `judge_metrics`), the run (`config`, `runner`: answers and
judgments through engine.dataset.pipeline's actor pools, resumable) and its report (`report`), and the published
numbers a model is charted beside (`reference/*.json`, read with `load_reference`). May import engine and
train.core, train.data, train.inference, train.mosear; never Ray directly (the runner asks the engine's pipeline for
its pools).

Each reference file holds one table of one seed paper:
`{"benchmark", "source": "<paper> Table N", "metric", "unit", "columns": {key: printed header}, "models":
{name: {key: value}}}`, plus optional `groups`, `modalities` and `notes`. Values are copied as printed (percent,
fraction or judge points, as `unit` says); a cell printed "-" is left out rather than stored as null.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def available_references() -> list[str]:
    folder = resources.files(__package__).joinpath("reference")
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_reference(benchmark: str) -> dict[str, Any]:
    """The published table stored as `reference/<benchmark>.json`, e.g. load_reference("saber_test")."""
    known = available_references()
    if benchmark not in known:
        raise ValueError(f"no reference table {benchmark!r}; available: {known}")
    text = resources.files(__package__).joinpath("reference", f"{benchmark}.json").read_text(encoding="utf-8")
    return json.loads(text)
