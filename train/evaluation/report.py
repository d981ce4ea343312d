"""What an evaluation leaves behind, and the comparison of several evaluations.

- `summary.json`: metrics (flat keys, rates as fractions), counts (items, answer failures by reason, parse
  failures, judge failures by reason), model, data, generation hash, judge model and prompt version/hash, the
  resolved config, and our numbers converted into the unit of each published reference table.
- `summary.md`: the metrics, then one table per reference file: this run beside the paper's models.
- `summary.png`: one panel per headline metric, the reference models and this run (highlighted) as bars.
- `compare()` / `write_comparison()`: two or more result folders of one benchmark side by side (markdown table
  with differences to the first run, a grouped bar chart, the same as JSON).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402

from engine.core import storage  # noqa: E402
from train.evaluation import load_reference  # noqa: E402
from train.evaluation.benchmarks import Benchmark, Metrics, Scores  # noqa: E402
from train.evaluation.judging import verdict_of  # noqa: E402

OURS_COLOR, REFERENCE_COLOR = "#C44E52", "#4C72B0"


def summarize(table: pa.Table, benchmark: Benchmark, meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json's content from the per-item table (runner.ITEMS_SCHEMA) and the run's metadata."""
    rows = table.to_pylist()
    answered = [r for r in rows if r["answer_status"] == "ok"]
    for row in answered:
        row["verdict"] = verdict_of(row["judge_status"], row["judge_scores"]) if benchmark.judge else None
    scores = benchmark.aggregate(answered) if answered else Scores({}, {"note": "no item was answered"})
    return {
        "benchmark": benchmark.name, **{k: v for k, v in meta.items() if k not in ("config", "run")},
        "counts": counts(rows, benchmark),
        "metrics": scores.metrics,
        "details": scores.details,
        "prompts": sorted({r["prompt_version"] for r in answered if r["prompt_version"]}),
        "headline": list(benchmark.headline),
        "references": reference_values(benchmark, scores.metrics),
        "config": meta.get("config"), "run": meta.get("run"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def counts(rows: list[dict[str, Any]], benchmark: Benchmark) -> dict[str, Any]:
    answered = [r for r in rows if r["answer_status"] == "ok"]
    out: dict[str, Any] = {
        "items": len(rows), "answered": len(answered),
        "answer_failures": dict(Counter(r["answer_fail_reason"] for r in rows if r["answer_status"] != "ok")),
        "parse_failures": sum(r["parse_error"] is not None for r in answered),
    }
    if benchmark.judge:
        out["judged"] = sum(r["judge_status"] == "ok" for r in answered)
        out["judge_failures"] = dict(Counter(r["judge_fail_reason"] or "not_judged" for r in answered
                                             if r["judge_status"] != "ok"))
    return out


def reference_values(benchmark: Benchmark, metrics: Metrics) -> list[dict[str, Any]]:
    """Per reference table: which of our keys are which of its columns, and our values in its unit."""
    out = []
    for spec in benchmark.references:
        table = load_reference(spec.name)
        scale = 100.0 if table["unit"] == "percent" else 1.0
        columns = {key: col for key in metrics if (col := spec.column(key)) in table["columns"]}
        if columns:
            ours = {col: None if metrics[key] is None else metrics[key] * scale for key, col in columns.items()}
            out.append({"name": spec.name, "source": table["source"], "unit": table["unit"], "columns": columns,
                        "ours": ours})
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    model, c = summary["model"], summary["counts"]
    lines = [f"# {summary['benchmark']}: {model['name']}", "",
             f"- model `{model['id']}` ({model['kind']}), generation config `{summary['generation_hash']}`",
             f"- data `{summary['data']}`"]
    if summary.get("judge"):
        lines.append(f"- judge `{summary['judge']['model']}`, prompt `{summary['judge']['prompt_version']}`")
    lines.append(f"- items {c['items']}, answered {c['answered']}, answer failures {_reasons(c['answer_failures'])}, "
                 f"parse failures {c['parse_failures']}"
                 + (f", judged {c['judged']}, judge failures {_reasons(c['judge_failures'])}" if "judged" in c else ""))
    lines += ["", "## Metrics (rates as fractions, judge scores in points)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value, 4)} |" for key, value in summary["metrics"].items()]
    for ref in summary["references"]:
        lines += ["", *reference_table(ref, model["name"])]
    return "\n".join(lines) + "\n"


def _reasons(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())} ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if counts else "0"


def reference_table(ref: dict[str, Any], name: str) -> list[str]:
    table = load_reference(ref["name"])
    cols = [col for col in table["columns"] if col in ref["ours"]]
    digits = 4 if table["unit"] == "fraction" else 2
    lines = [f"## Beside {table['source']} ({table['unit']})", "",
             "| model | " + " | ".join(table["columns"][col] for col in cols) + " |", "|---" * (len(cols) + 1) + "|",
             f"| **{name} (this run)** | " + " | ".join(_fmt(ref["ours"][col], digits) for col in cols) + " |"]
    for other, values in table["models"].items():
        lines.append(f"| {other} | " + " | ".join(_fmt(values.get(col), digits) for col in cols) + " |")
    return lines


def _panels(summary: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]], float | None]]:
    """(title, reference bars, our value) per headline metric, from the first table that prints it."""
    panels = []
    for key in summary["headline"]:
        ref = next((r for r in summary["references"] if key in r["columns"]), None)
        if ref is None:
            continue
        table, col = load_reference(ref["name"]), ref["columns"][key]
        bars = [(model, values[col]) for model, values in table["models"].items() if col in values]
        panels.append((f"{table['columns'][col]}\n{table['source']}", bars, ref["ours"][col]))
    return panels


def chart(summary: dict[str, Any]) -> bytes:
    name, panels = summary["model"]["name"], _panels(summary)
    if not panels:  # no published column for our metrics: chart them alone
        panels = [(key, [], value) for key, value in summary["metrics"].items()][:12]
    ncols = min(4, len(panels)) or 1
    nrows = math.ceil(len(panels) / ncols) or 1
    height = max(len(bars) for _, bars, _ in panels) * 0.24 + 1.6 if panels else 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, height * nrows), squeeze=False)
    for ax, (title, bars, ours) in zip(axes.flat, panels, strict=False):
        entries = sorted([*bars, (f"{name} (this run)", ours if ours is not None else 0.0)], key=lambda b: b[1])
        colors = [OURS_COLOR if label.endswith("(this run)") else REFERENCE_COLOR for label, _ in entries]
        bars = ax.barh([label for label, _ in entries], [value for _, value in entries], color=colors)
        ax.bar_label(bars, labels=[_fmt(ours) if c == OURS_COLOR else "" for c in colors], fontsize=7)
        ax.set_title(title if ours is not None else f"{title}\n(not measured in this run)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{summary['benchmark']}: {name} beside the published numbers", fontsize=10)
    return _png(fig)


def _png(fig: plt.Figure) -> bytes:
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def _put(folder: str, name: str, data: bytes) -> None:
    fs = storage.filesystem(folder)
    fs.makedirs(storage.strip_protocol(folder), exist_ok=True)
    fs.pipe_file(f"{storage.strip_protocol(folder)}/{name}", data)


def write_outputs(folder: str, summary: dict[str, Any]) -> None:
    _put(folder, "summary.json", json.dumps(summary, indent=2, ensure_ascii=False).encode())
    _put(folder, "summary.md", markdown(summary).encode())
    _put(folder, "summary.png", chart(summary))


# ---------------------------------------------------------------- comparing result folders


def read_summary(folder: str) -> dict[str, Any]:
    fs, path = storage.filesystem(folder), f"{storage.strip_protocol(folder)}/summary.json"
    if not fs.exists(path):
        raise FileNotFoundError(f"{folder} has no summary.json (not an evaluation result folder?)")
    return json.loads(fs.cat_file(path))


def compare(folders: list[str], labels: list[str] | None = None) -> dict[str, Any]:
    """Two or more result folders of one benchmark, side by side."""
    if len(folders) < 2:
        raise ValueError(f"compare needs two or more result folders, got {len(folders)}")
    if labels is not None and len(labels) != len(folders):
        raise ValueError(f"{len(labels)} labels for {len(folders)} folders")
    summaries = [read_summary(folder) for folder in folders]
    if len(benchmarks := {s["benchmark"] for s in summaries}) > 1:
        raise ValueError(f"the folders hold different benchmarks {sorted(benchmarks)}: compare one at a time")
    labels = labels or _labels(summaries, folders)
    keys = list(dict.fromkeys(key for s in summaries for key in s["metrics"]))
    metrics = {key: [s["metrics"].get(key) for s in summaries] for key in keys}
    return {
        "benchmark": summaries[0]["benchmark"],
        "runs": [{"label": label, "folder": folder, "model": s["model"], "generation_hash": s["generation_hash"],
                  "judge": (s.get("judge") or {}).get("id"), "counts": s["counts"]}
                 for label, folder, s in zip(labels, folders, summaries, strict=True)],
        "metrics": metrics,
        "headline": [k for k in summaries[0]["headline"] if any(v is not None for v in metrics.get(k, []))],
    }


def _labels(summaries: list[dict[str, Any]], folders: list[str]) -> list[str]:
    names = [s["model"]["name"] for s in summaries]
    if len(set(names)) == len(names):
        return names
    names = [folder.rstrip("/").rsplit("/", 1)[-1] for folder in folders]
    return names if len(set(names)) == len(names) else [f"{n} ({i + 1})" for i, n in enumerate(names)]


def comparison_markdown(comparison: dict[str, Any]) -> str:
    runs = comparison["runs"]
    first = runs[0]["label"]
    header = [r["label"] for r in runs] + [f"{r['label']} − {first}" for r in runs[1:]]
    lines = [f"# {comparison['benchmark']}: {' vs '.join(r['label'] for r in runs)}", ""]
    lines += [f"- {r['label']}: `{r['model']['id']}`, generation `{r['generation_hash']}`, folder `{r['folder']}`"
              + (f", judge `{r['judge']}`" if r["judge"] else "") for r in runs]
    if len({r["judge"] for r in runs}) > 1:
        lines.append("- note: the runs were judged by different judges or prompt versions")
    lines += ["", "| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for key, values in comparison["metrics"].items():
        deltas = [None if v is None or values[0] is None else v - values[0] for v in values[1:]]
        lines.append(f"| {key} | " + " | ".join(_fmt(v, 4) for v in values) + " | "
                     + " | ".join("–" if d is None else f"{d:+.4f}" for d in deltas) + " |")
    for name in ("items", "answered", "parse_failures", "judged"):
        if all(name in r["counts"] for r in runs):
            lines.append(f"| count: {name} | " + " | ".join(str(r["counts"][name]) for r in runs) + " |"
                         + " |" * (len(runs) - 1))
    return "\n".join(lines) + "\n"


def comparison_chart(comparison: dict[str, Any]) -> bytes:
    keys = comparison["headline"] or [k for k, v in comparison["metrics"].items()
                                      if any(x is not None for x in v)][:12]
    runs = comparison["runs"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(keys) * len(runs) ** 0.5 + 2), 4.5))
    for i, run in enumerate(runs):
        values = [comparison["metrics"][k][i] for k in keys]
        positions = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(keys))]
        bars = ax.bar(positions, [v or 0.0 for v in values], width, label=run["label"])
        ax.bar_label(bars, labels=[_fmt(v, 2) for v in values], fontsize=6)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize=7)
    ax.set_title(f"{comparison['benchmark']}: side by side (rates as fractions, judge scores in points)", fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def write_comparison(out: str, comparison: dict[str, Any]) -> None:
    _put(out, "comparison.json", json.dumps(comparison, indent=2, ensure_ascii=False).encode())
    _put(out, "comparison.md", comparison_markdown(comparison).encode())
    _put(out, "comparison.png", comparison_chart(comparison))
