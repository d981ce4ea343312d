"""The dataset card: OUT/README.md in the Hugging Face dataset-card layout, with its plots in OUT/card/.

The YAML header names the loadable configs (`sed` and, when it has records, `saber_test`) with their Parquet files
and features, so that `datasets.load_dataset(OUT, "sed")` reads a build as described. The body says where the
clips came from, what the filters removed (per corpus), how the splits were made, the corpora's licences and the
known limitations. Everything is computed from the written outputs (clips/, report.json), so the card of a
resumed build describes all its runs.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from engine.core import storage
from engine.core.sed import SED_SCHEMA
from engine.dataset.holdout import TEST_SCHEMA

CARD_DIR = "card"

# Licences as published by each corpus (checked: CREMA-D's repository, RAVDESS's Zenodo record, MELD's repository).
# The others are distributed under agreements signed with their authors: the card says so rather than guessing.
LICENCES = {
    "crema-d": "Open Database License (ODbL) v1.0",
    "ravdess": "CC BY-NC-SA 4.0",
    "meld": "GPL-3.0 (repository licence)",
}
AGREEMENT = "terms of the corpus's own licence or end-user agreement (not verified by this card)"


def _features(schema: pa.Schema) -> list[dict[str, str]]:
    types = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float64(): "float64"}
    return [{"name": field.name, "dtype": types.get(field.type, str(field.type))} for field in schema]


def card_header(test_records: int, languages: list[str]) -> dict[str, Any]:
    configs = [{"config_name": "sed", "data_files": [{"split": "train", "path": "sed/*.parquet"}]}]
    infos = [{"config_name": "sed", "features": _features(SED_SCHEMA)}]
    if test_records:  # an empty split file breaks loaders (datasets raises on a config with no rows to infer from)
        configs.append({"config_name": "saber_test", "data_files": [{"split": "test",
                                                                     "path": "saber_test/*.parquet"}]})
        infos.append({"config_name": "saber_test", "features": _features(TEST_SCHEMA)})
    return {"pretty_name": "SABER (emotion reasoning, built with the SABER engine)", "language": languages or ["en"],
            "license": "other", "task_categories": ["video-text-to-text"], "configs": configs,
            "dataset_info": infos}


def per_corpus(table: pa.Table) -> dict[str, dict[str, Any]]:
    """Clips in, kept, and rejected by stage, per corpus (`dataset` column)."""
    out: dict[str, dict[str, Any]] = {}
    for row in table.select(["dataset", "status", "reject_stage"]).to_pylist():
        entry = out.setdefault(row["dataset"] or "unknown", {"input": 0, "kept": 0, "rejected_by_stage": Counter()})
        entry["input"] += 1
        if row["status"] == "kept":
            entry["kept"] += 1
        else:
            entry["rejected_by_stage"][row["reject_stage"]] += 1
    return {name: {**v, "rejected_by_stage": dict(v["rejected_by_stage"].most_common())}
            for name, v in sorted(out.items())}


def render_card(table: pa.Table, report: dict[str, Any]) -> str:
    kept = table.filter(pc.equal(table.column("status"), "kept"))
    splits = report.get("splits", {})
    test = splits.get("saber_test", {})
    test_records = int(test.get("consistent", 0)) + int(test.get("inconsistent", 0))
    languages = sorted({lang for lang in kept.column("lang").to_pylist() if lang})
    corpora = per_corpus(table)
    header = yaml.safe_dump(card_header(test_records, languages), sort_keys=False)
    lines = [f"---\n{header}---", "", "# SABER", "",
             "Short clips with a six-dimension emotion annotation, turned into structured evidence decomposition "
             "(SED) training records and the SABER-Test split, built by the SABER engine.", "",
             "```python", "from datasets import load_dataset", 'train = load_dataset("path/to/this/folder", "sed")',
             *(['test = load_dataset("path/to/this/folder", "saber_test")'] if test_records else []), "```", "",
             "## Sources", "", "| corpus | clips in | kept | rejected by stage | licence |", "|---|---|---|---|---|"]
    for name, entry in corpora.items():
        rejected = ", ".join(f"{stage} {n}" for stage, n in entry["rejected_by_stage"].items()) or "-"
        lines.append(f"| {name} | {entry['input']} | {entry['kept']} | {rejected} | "
                     f"{LICENCES.get(name.lower(), AGREEMENT)} |")
    lines += ["", "![clips per corpus, language and emotion](card/composition.png)", "",
              "## Filters", "", f"{report['input']} clips in, {report['kept']} kept. Rejected by stage and reason:", ""]
    lines += [f"- `{reason}`: {n}" for reason, n in report["rejected_by_reason"].items()] or ["- none"]
    retry = report.get("retry", {})
    if retry.get("pending") or retry.get("gave_up"):
        lines += ["", f"Not finished: {retry.get('pending', 0)} clips wait for a rerun after faults of the world "
                      f"(API, storage, memory); {retry.get('gave_up', 0)} were given up after repeated faults."]
    lines += ["", "![duration, SNR and WER of the kept clips; funnel per corpus](card/distributions.png)", "",
              "## Splits", "",
              f"- `sed` (train): {splits.get('sed_train', 0)} records of {splits.get('sed_records', 0)} annotated "
              "clips.",
              f"- `saber_test`: {test.get('consistent', 0)} consistent and {test.get('inconsistent', 0)} inconsistent "
              "clips (audio-visual relation judged by an LLM).",
              f"- Held out of training because they share a recording with a test clip: "
              f"{splits.get('held_out_same_video', 0)}.", "",
              "No recording (`source_video`) has clips on both sides of the split.", "",
              "## Known limitations", "",
              "- Annotations and relation verdicts are written by models; the filters remove clips whose transcript "
              "or description disagrees with the annotation, not every wrong annotation.",
              "- The emotion labels of the source corpora follow different taxonomies.",
              "- Near-duplicate clips across corpora (the same footage cut by two corpora) are only as separated as "
              "their `source_video` values make them.", ""]
    return "\n".join(lines)


def plot_composition(table: pa.Table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = table.filter(pc.equal(table.column("status"), "kept"))
    panels = [("clips kept per corpus", Counter(kept.column("dataset").to_pylist())),
              ("language", Counter(kept.column("lang").to_pylist())),
              ("corpus emotion label", Counter(kept.column("label").to_pylist()))]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, counts) in zip(axes, panels, strict=True):
        names = [str(k) for k, _ in counts.most_common()] or ["(none)"]
        bars = ax.bar(names, [n for _, n in counts.most_common()] or [0], color="#4C72B0")
        ax.bar_label(bars)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
    return _png(fig, plt)


def plot_distributions(table: pa.Table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = table.filter(pc.equal(table.column("status"), "kept"))
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for ax, (column, title) in zip(axes[:3], (("duration_s", "duration (s)"), ("snr_db", "SNR (dB)"),
                                               ("asr_wer", "ASR WER")), strict=True):
        values = [v for v in kept.column(column).to_pylist() if v is not None]
        if values:
            ax.hist(values, bins=20, color="#55A868")
        else:  # e.g. ASR off: say so instead of drawing an empty histogram
            ax.text(0.5, 0.5, "not measured in this build", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{title}, {len(values)} kept clips")
    corpora = per_corpus(table)
    stages = sorted({s for v in corpora.values() for s in v["rejected_by_stage"]})
    names = list(corpora) or ["(none)"]
    bottom = [corpora[n]["kept"] if n in corpora else 0 for n in names]
    axes[3].bar(names, bottom, label="kept", color="#4C72B0")
    reds = plt.get_cmap("Reds")
    for i, stage in enumerate(stages):
        heights = [corpora[n]["rejected_by_stage"].get(stage, 0) for n in names]
        axes[3].bar(names, heights, bottom=bottom, label=f"rejected: {stage}",
                    color=reds(0.35 + 0.6 * i / max(1, len(stages) - 1)))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes[3].set_title("funnel per corpus")
    axes[3].legend(fontsize=7)
    axes[3].tick_params(axis="x", labelrotation=30)
    return _png(fig, plt)


def _png(fig: Any, plt: Any) -> bytes:
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def write_card(output: str, table: pa.Table, report: dict[str, Any]) -> None:
    fs = storage.filesystem(output)
    base = storage.strip_protocol(output)
    fs.makedirs(f"{base}/{CARD_DIR}", exist_ok=True)
    fs.pipe_file(f"{base}/{CARD_DIR}/composition.png", plot_composition(table))
    fs.pipe_file(f"{base}/{CARD_DIR}/distributions.png", plot_distributions(table))
    fs.pipe_file(f"{base}/README.md", render_card(table, report).encode("utf-8"))
