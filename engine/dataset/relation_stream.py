"""The relation judge inside the stream: each kept, annotated clip gets its audio-visual relation verdict in the last
actor pool of the build, and the verdict is saved to `relations/` right after the writer commits the clip's part.

Before, the judge ran after the stream over every clip at once (about 2 h at 600K clips before the splits could
start); now the global step only selects, and judges only what the stream could not (clips of older builds, and
retryable failures). A verdict rides with its clip row as extra `rel__*` columns, which `split_batch` takes off
before the writer sees the row: clips/ keeps exactly CLIP_SCHEMA. A judge failure never changes the clip's status
(it is recorded in the verdict, as after the stream). If a run dies between the clip's part and its verdict's, the
next build's global step judges that clip again (the HTTP response cache keeps it from being paid twice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.core.schema import CLIP_SCHEMA
from engine.dataset import holdout

PREFIX = "rel__"


class RelationStreamBatch:
    """Actor-pool callable: CLIP_SCHEMA rows -> the same rows plus `rel__<RELATION_SCHEMA column>` (null for rows the
    judge does not label). The judge stage is built once per actor by `factory`."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.judge = holdout.RelationBatch(factory)

    def __call__(self, table: pa.Table) -> pa.Table:
        mask = holdout.candidate_mask(table).to_pylist()
        picked = table.filter(pa.array(mask, pa.bool_()))
        verdicts = (self.judge(picked.select(list(holdout.JUDGE_COLUMNS))).to_pylist() if picked.num_rows else [])
        by_row = iter(verdicts)
        rows = [next(by_row) if chosen else None for chosen in mask]
        for field in holdout.RELATION_SCHEMA:
            values = [None if row is None else row[field.name] for row in rows]
            table = table.append_column(pa.field(PREFIX + field.name, field.type), pa.array(values, field.type))
        return table


def split_batch(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A stream batch -> (its clip rows as CLIP_SCHEMA, the verdicts of its judged rows as RELATION_SCHEMA)."""
    clips = table.select(CLIP_SCHEMA.names)
    if PREFIX + "clip_id" not in table.column_names:
        return clips, holdout.RELATION_SCHEMA.empty_table()
    judged = table.filter(pc.is_valid(table.column(PREFIX + "clip_id")))
    verdicts = pa.table({f.name: judged.column(PREFIX + f.name) for f in holdout.RELATION_SCHEMA},
                        schema=holdout.RELATION_SCHEMA)
    return clips, verdicts


class RelationSink:
    """Buffers the stream's verdicts and saves them as relations/ parts each time the clip writer has committed a
    part (so a verdict is not saved long before its clip), and at the end. Retryable judge failures are settled
    against earlier builds' attempts (gave_up on the last one), exactly as the judge after the stream does."""

    def __init__(self, output: str, run_id: str, max_attempts: int, earlier: Counter[str], stem: str = "s") -> None:
        self.output, self.run_id, self.max_attempts, self.earlier = output, run_id, max_attempts, earlier
        self.stem = stem  # part names part-<run>-<stem>NNNNN: the stream's "s", the judge after the stream's ""
        self.buffered: list[pa.Table] = []
        self.parts = 0
        self.saved = 0

    @property
    def buffered_rows(self) -> int:
        return sum(table.num_rows for table in self.buffered)

    def add(self, verdicts: pa.Table, clip_part_committed: bool) -> None:
        if verdicts.num_rows:
            self.buffered.append(holdout.settle_relations(verdicts, self.earlier, self.max_attempts))
        if clip_part_committed:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffered)
        holdout.save_relations(self.output, self.run_id, table, self.parts, stem=self.stem)
        self.buffered, self.parts, self.saved = [], self.parts + 1, self.saved + table.num_rows
