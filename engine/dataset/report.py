"""`report.json` and the funnel plot `report.png`, computed from the written clips/ table."""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from engine.core import storage  # noqa: E402
from engine.core.failures import GAVE_UP  # noqa: E402
from engine.dataset.ledger import Attempts  # noqa: E402


def build_report(table: pa.Table, stages: list[str], run: dict[str, Any],
                 pending: dict[str, Attempts] | None = None) -> dict[str, Any]:
    """Counts over every finished clip of the output (all runs), plus this run's throughput figures in `run`.
    `pending`: clips not finished because runs failed them for a reason of the world (engine.dataset.ledger), with
    their last reason; `gave_up`: clips finished as rejected after too many such failures. Counted in Arrow: `table`
    needs only status, reject_stage, reject_reason, failure and duration_s."""
    status = table.column("status")
    rejected = table.filter(pc.equal(status, "rejected"))
    by_stage = _counts(rejected.column("reject_stage"))
    by_reason = _counts(_stage_reason(rejected))
    remaining, funnel = table.num_rows, [{"stage": "input", "remaining": table.num_rows}]
    for stage in stages:
        remaining -= by_stage.get(stage, 0)
        funnel.append({"stage": stage, "remaining": remaining, "rejected": by_stage.get(stage, 0)})
    kept = pc.fill_null(pc.equal(status, "kept"), False)
    kept_seconds = pc.sum(table.column("duration_s").filter(kept)).as_py() or 0.0
    return {
        "input": table.num_rows,
        "kept": pc.sum(kept).as_py() or 0,
        "rejected": rejected.num_rows,
        "rejected_by_stage": by_stage,
        "rejected_by_reason": by_reason,
        "funnel": funnel,
        "kept_media_hours": round(kept_seconds / 3600, 4),
        "retry": _retry_section(table, pending or {}),
        "run": run,
    }


def _stage_reason(table: pa.Table) -> pa.Array:
    """"stage/reason" per row, "None" for a missing part (as an f-string of the two values writes it)."""
    def text(name: str) -> pa.Array:
        return pc.fill_null(table.column(name).combine_chunks(), "None")

    return pc.binary_join_element_wise(text("reject_stage"), text("reject_reason"), "/")


def _counts(values: pa.Array | pa.ChunkedArray) -> dict[Any, int]:
    """Counter(values).most_common() as a dict: most frequent first, ties in order of first appearance."""
    if not len(values):
        return {}
    pairs = [(c["values"], c["counts"]) for c in pc.value_counts(values).to_pylist()]
    return dict(sorted(pairs, key=lambda pair: -pair[1]))


def _retry_section(table: pa.Table, pending: dict[str, Attempts]) -> dict[str, Any]:
    gave_up = table.filter(pc.fill_null(pc.equal(table.column("failure"), GAVE_UP), False))
    reasons = _counts(_stage_reason(gave_up))
    return {"pending": len(pending),
            "pending_by_reason": dict(Counter(f"{a.stage}/{a.reason}" for a in pending.values()).most_common()),
            "pending_attempts": dict(sorted(Counter(a.count for a in pending.values()).items())),
            "gave_up": gave_up.num_rows, "gave_up_by_reason": reasons}


def plot_report(report: dict[str, Any]) -> bytes:
    """Clips remaining after each stage, rejections by stage/reason, and (after the stream) the splits."""
    splits = report.get("splits")
    fig, axes = plt.subplots(1, 3 if splits else 2, figsize=(17 if splits else 12, 4.5))
    left, right = axes[0], axes[1]
    stages = [row["stage"] for row in report["funnel"]]
    remaining = [row["remaining"] for row in report["funnel"]]
    bars = left.bar(stages, remaining, color="#4C72B0")
    left.bar_label(bars)
    left.set_title(f"Funnel: {report['input']} in, {report['kept']} kept")
    left.set_ylabel("clips remaining")
    left.tick_params(axis="x", labelrotation=30)
    reasons = list(report["rejected_by_reason"].items())[::-1]
    right.barh([r for r, _ in reasons] or ["(none)"], [n for _, n in reasons] or [0], color="#C44E52")
    right.set_title(f"Rejected: {report['rejected']} by stage/reason")
    right.set_xlabel("clips")
    if splits:
        _plot_splits(axes[2], splits)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def _plot_splits(ax: plt.Axes, splits: dict[str, Any]) -> None:
    """Where the kept, annotated clips went: training records, SABER-Test subsets, held out with a test clip."""
    test = splits.get("saber_test", {})
    relations = splits.get("relations", {})
    items = [("SED records", splits["sed_records"]), ("sed/ (train)", splits["sed_train"]),
             ("test: consistent", test.get("consistent", 0)), ("test: inconsistent", test.get("inconsistent", 0)),
             ("held out (same video)", splits.get("held_out_same_video", 0)),
             ("relation judge failed", sum(relations.get("failed", {}).values()))]
    colors = ["#4C72B0", "#55A868", "#8172B2", "#CCB974", "#64B5CD", "#C44E52"]
    bars = ax.barh([n for n, _ in items][::-1], [v for _, v in items][::-1], color=colors[::-1])
    ax.bar_label(bars)
    ax.set_title("After the stream: splits")
    ax.set_xlabel("clips")


def write_report(output: str, report: dict[str, Any]) -> None:
    fs = storage.filesystem(output)
    base = storage.strip_protocol(output)
    fs.pipe_file(f"{base}/report.json", json.dumps(report, indent=2).encode())
    fs.pipe_file(f"{base}/report.png", plot_report(report))
