"""The dataset card: what it counts per corpus (worked out by hand from a small clip table), its YAML header, its
plots, and that `datasets.load_dataset` reads both splits of a build folder through that header."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from engine.core.schema import CLIP_SCHEMA, new_row, reject
from engine.dataset import card, holdout
from engine.dataset.report import build_report
from tests.engine.test_holdout import FIELDS, JUDGED, _verdicts

# name, corpus, language, recording, status (or a reject stage/reason), duration
SPEC = [("a", "MELD", "en", "v1", None, 2.0), ("b", "MELD", "en", "v1", None, 3.0),
        ("c", "RAVDESS", "en", "v2", None, 4.0), ("d", "RAVDESS", "en", "v2", None, 2.5),
        ("e", "CH-SIMS", "zh", "v3", None, 6.0), ("f", "CH-SIMS", "zh", "v4", None, 5.0),
        ("g", "MELD", "en", "v5", None, 1.0), ("h", "MELD", "en", "v6", None, 1.5),
        ("x", "RAVDESS", "en", "v7", ("decode", "duration_mismatch"), 3.0),
        ("z", "CH-SIMS", "zh", "v8", ("asr", "wer_too_high"), 3.0)]


def _table() -> pa.Table:
    rows = []
    for name, corpus, lang, video, rejected, seconds in SPEC:
        row = new_row(f"/d/{name}.mp4", source_video=video, dataset=corpus, lang=lang, duration_s=seconds,
                      label="happy", **FIELDS)
        if rejected:
            reject(row, *rejected)
        rows.append({k: row[k] for k in CLIP_SCHEMA.names})
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def _build(tmp_path, with_test=True):
    table = _table()
    verdicts = _verdicts(table, JUDGED) if with_test else None  # None: saber_test.enabled=false
    splits = holdout.make_splits(holdout.sed_candidates(table), verdicts, per_subset=2)
    holdout.write_splits(str(tmp_path), splits, with_test=with_test)
    report = build_report(table, ["decode", "asr"], {})
    report["splits"] = splits.stats
    card.write_card(str(tmp_path), table, report)
    return table, splits


def test_the_card_counts_each_corpus_and_names_the_loadable_configs(tmp_path):
    table, splits = _build(tmp_path)
    assert card.per_corpus(table) == {
        "CH-SIMS": {"input": 3, "kept": 2, "rejected_by_stage": {"asr": 1}},
        "MELD": {"input": 4, "kept": 4, "rejected_by_stage": {}},
        "RAVDESS": {"input": 3, "kept": 2, "rejected_by_stage": {"decode": 1}}}
    text = (tmp_path / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["sed", "saber_test"]
    assert header["language"] == ["en", "zh"]
    assert "| RAVDESS | 3 | 2 | decode 1 | CC BY-NC-SA 4.0 |" in text
    assert f"`sed` (train): {len(splits.train)} records of 8 annotated clips" in text
    assert "- `decode/duration_mismatch`: 1" in text and "10 clips in, 8 kept" in text
    for png in ("composition.png", "distributions.png"):
        assert (tmp_path / "card" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "card" / png).stat().st_size > 10_000


def test_load_dataset_reads_both_splits_as_the_card_describes(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _, splits = _build(tmp_path)
    cache = tmp_path / "hf-cache"
    train = datasets.load_dataset(str(tmp_path), "sed", cache_dir=str(cache))["train"]
    test = datasets.load_dataset(str(tmp_path), "saber_test", cache_dir=str(cache))["test"]
    assert (train.num_rows, test.num_rows) == (len(splits.train), len(splits.test)) and test.num_rows == 4
    assert sorted(test.column_names) == sorted(holdout.TEST_SCHEMA.names)
    assert set(train["clip_id"]).isdisjoint(test["clip_id"])


def test_without_a_test_split_the_card_lists_only_sed(tmp_path):
    _build(tmp_path, with_test=False)
    header = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["sed"]
