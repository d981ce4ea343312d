"""Training metrics: `metrics.jsonl` in the run folder (local or S3) and a loss-curve PNG at the end.

Rank 0 keeps the rows in memory and rewrites the file every few steps (S3 has no append). On resume it
reloads the file and drops rows past the restored step, so the curve continues instead of restarting.
"""

from __future__ import annotations

import io
import json
from typing import Any

from engine.core import storage


class MetricsLog:
    def __init__(self, run_dir: str, flush_every: int = 10) -> None:
        self.fs = storage.filesystem(run_dir)
        self.path = f"{storage.strip_protocol(run_dir)}/metrics.jsonl"
        self.flush_every = flush_every
        self.rows: list[dict[str, Any]] = []

    def resume(self, step: int) -> None:
        """Keeps the rows up to `step` (the restored checkpoint); later ones are redone."""
        if self.fs.exists(self.path):
            lines = self.fs.cat_file(self.path).decode().splitlines()
            self.rows = [row for row in map(json.loads, filter(None, lines)) if row["step"] <= step]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(self.path, "".join(json.dumps(r) + "\n" for r in self.rows).encode())

    def plot(self, title: str, keys: tuple[str, ...] = ("loss",)) -> None:
        """A PNG next to the JSONL: each key against the optimizer step."""
        import matplotlib  # here, not at the top: every training worker imports this module, only the driver plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            points = [(r["step"], r[key]) for r in self.rows if key in r]
            ax.plot([s for s, _ in points], [v for _, v in points], marker=".")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=110)
        plt.close(fig)
        self.fs.pipe_file(self.path.replace("metrics.jsonl", "loss.png"), out.getvalue())
