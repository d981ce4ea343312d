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

from engine import storage  # noqa: E402


def build_report(table: pa.Table, stages: list[str], run: dict[str, Any]) -> dict[str, Any]:
    """Counts over every clip of the output (all runs), plus this run's throughput figures in `run`."""
    status = table.column("status").to_pylist()
    stage_col = table.column("reject_stage").to_pylist()
    reason_col = table.column("reject_reason").to_pylist()
    durations = table.column("duration_s").to_pylist()
    by_stage = Counter(s for s, st in zip(stage_col, status, strict=True) if st == "rejected")
    by_reason = Counter(f"{s}/{r}" for s, r, st in zip(stage_col, reason_col, status, strict=True) if st == "rejected")
    remaining, funnel = len(status), [{"stage": "input", "remaining": len(status)}]
    for stage in stages:
        remaining -= by_stage.get(stage, 0)
        funnel.append({"stage": stage, "remaining": remaining, "rejected": by_stage.get(stage, 0)})
    kept_seconds = sum(d or 0.0 for d, st in zip(durations, status, strict=True) if st == "kept")
    return {
        "input": len(status),
        "kept": status.count("kept"),
        "rejected": status.count("rejected"),
        "rejected_by_stage": dict(by_stage.most_common()),
        "rejected_by_reason": dict(by_reason.most_common()),
        "funnel": funnel,
        "kept_media_hours": round(kept_seconds / 3600, 4),
        "run": run,
    }


def plot_report(report: dict[str, Any]) -> bytes:
    """Two panels: clips remaining after each stage, and rejections by stage/reason."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    stages = [row["stage"] for row in report["funnel"]]
    remaining = [row["remaining"] for row in report["funnel"]]
    bars = left.bar(stages, remaining, color="#4C72B0")
    left.bar_label(bars)
    left.set_title(f"Funnel: {report['input']} in, {report['kept']} kept")
    left.set_ylabel("clips remaining")
    reasons = list(report["rejected_by_reason"].items())[::-1]
    right.barh([r for r, _ in reasons] or ["(none)"], [n for _, n in reasons] or [0], color="#C44E52")
    right.set_title(f"Rejected: {report['rejected']} by stage/reason")
    right.set_xlabel("clips")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def write_report(output: str, report: dict[str, Any]) -> None:
    fs = storage.filesystem(output)
    base = storage.strip_protocol(output)
    fs.pipe_file(f"{base}/report.json", json.dumps(report, indent=2).encode())
    fs.pipe_file(f"{base}/report.png", plot_report(report))
