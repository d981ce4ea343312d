"""The attempt ledger: every retryable failure (engine.core.failures) of a resumable loop, one row per item and run.

Finished outcomes live in each loop's own table (clips/, relations/, the preference ledger, answers/); what is
not finished yet because the world failed it waits here, in OUT/attempts/<loop>/part-*.parquet, so that
- a rerun knows how many runs already tried an item (and records `gave_up` once `max_attempts` is reached),
- the report can say what is still pending and why, and nothing fails silently.
Part files appear whole or not at all (engine.core.parts.write_parquet_whole); reads retry storage errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.core import storage
from engine.core.failures import GAVE_UP, RETRYABLE, FailureClass, gave_up_detail
from engine.core.parts import PART_PREFIX, read_parts, write_parquet_whole

ATTEMPT_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),  # the loop's item id: clip_id, query_id, item_id ...
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
    pa.field("at", pa.timestamp("ms", tz="UTC")),
])


@dataclass(frozen=True)
class Attempts:
    """What earlier runs saw for one item: how many failed, and the last failure."""

    count: int
    stage: str | None
    reason: str | None
    detail: str | None


@dataclass(frozen=True)
class Settled:
    """One outcome judged against the ledger: `attempt` is this run's number for the item (1 = first try)."""

    attempt: int
    failure: FailureClass | None  # None: no failure; RETRYABLE: record and retry later; GAVE_UP: finished
    detail: str | None


def settle(earlier_failures: int, failure: FailureClass | None, detail: str | None, max_attempts: int) -> Settled:
    """The rule every loop shares: after `earlier_failures` retryable failures of an item, this run's outcome
    is attempt number earlier + 1, and a retryable failure on attempt `max_attempts` is `gave_up` (finished)."""
    attempt = earlier_failures + 1
    if failure == RETRYABLE and attempt >= max_attempts:
        return Settled(attempt, GAVE_UP, gave_up_detail(attempt, detail))
    return Settled(attempt, failure, detail)


class AttemptLedger:
    def __init__(self, output: str, loop: str, run_id: str, max_attempts: int) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.dir = storage.join(output, "attempts", loop)
        self.run_id, self.max_attempts = run_id, max_attempts
        self._earlier: dict[str, Attempts] = {}
        self._pending: list[dict[str, Any]] = []
        self._parts = 0

    def load(self) -> dict[str, Attempts]:
        """Every item's earlier failures (all runs), also kept for `settle`."""
        counts: dict[str, Attempts] = {}
        for row in read_parts(self.dir, ATTEMPT_SCHEMA).sort_by([("at", "ascending")]).to_pylist():
            earlier = counts.get(row["key"])
            counts[row["key"]] = Attempts((earlier.count if earlier else 0) + 1, row["stage"], row["reason"],
                                          row["detail"])
        self._earlier = counts
        return counts

    def settle(self, key: str, failure: FailureClass | None, detail: str | None) -> Settled:
        """This run's outcome for `key`: a retryable failure on the last allowed attempt becomes `gave_up`."""
        earlier = self._earlier.get(key)
        return settle(earlier.count if earlier else 0, failure, detail, self.max_attempts)

    def add(self, key: str, stage: str | None, reason: str | None, detail: str | None) -> None:
        """Records a retryable failure of this run (written at the next `flush`)."""
        self._pending.append({"key": key, "run_id": self.run_id, "stage": stage, "reason": reason,
                              "detail": (detail or "")[:500] or None, "at": datetime.now(timezone.utc)})

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending, schema=ATTEMPT_SCHEMA)
        write_parquet_whole(self.dir, f"{PART_PREFIX}{self.run_id}-{self._parts:05d}.parquet", table)
        self._pending, self._parts = [], self._parts + 1

    def pending(self, finished: Iterable[str] | pa.Array | pa.ChunkedArray) -> dict[str, Attempts]:
        """Items whose last run failed for a reason of the world and that no run has finished since. `finished` may
        be an Arrow column (a build's clip ids): the ledger's few keys are looked up in it, no Python set is made."""
        earlier = self.load()
        keys = pa.array(list(earlier), pa.string())
        done = finished if isinstance(finished, pa.Array | pa.ChunkedArray) else pa.array(list(finished), pa.string())
        if isinstance(done, pa.ChunkedArray):
            done = done.combine_chunks()
        still = pc.invert(pc.is_in(keys, value_set=done))
        return {key: earlier[key] for key in keys.filter(still).to_pylist()}
