"""What every stage shares: declared columns, per-row isolation of failures, pass-through of rejects.

A stage is a small class: its config in `__init__` (models load there, once per actor), and
`__call__(rows) -> rows` over a batch of row dicts. Stages never import ray; engine/dataset/pipeline.py turns
them into Ray Data operators.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from engine.core.failures import exception_failure
from engine.core.media import MediaError
from engine.core.schema import is_alive, reject
from engine.ops import monitoring

log = logging.getLogger(__name__)

Row = dict[str, Any]


class StageInputError(KeyError):
    """A batch lacks columns the stage needs: a wiring bug, not bad data."""


class RowStage:
    """Applies `process_row` to each live row; a bad clip becomes a rejected row, never a crash.

    MediaError carries the recorded reason: a final verdict about the clip. Any other exception from one clip
    is recorded too (logged with its traceback) rather than raised: one clip must not take down an actor pool
    and, through retries, the whole job. Such an exception is no verdict about the clip (storage, memory, a
    bug), so it is recorded as retryable (engine.core.failures): the clip is not finished and the next run tries it.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()

    def __call__(self, rows: list[Row]) -> list[Row]:
        if rows:
            missing = [col for col in self.requires if col not in rows[0]]
            if missing:
                raise StageInputError(f"{self.name} stage needs columns {missing}")
        started = time.perf_counter()
        with monitoring.stage_timer(self.name, len(rows)):
            for row in rows:
                if is_alive(row):
                    self._guarded(row)
        log.debug("%s: %d rows in %.3fs", self.name, len(rows), time.perf_counter() - started)
        return rows

    def _guarded(self, row: Row) -> None:
        try:
            self.process_row(row)
        except MediaError as err:
            reject(row, self.name, err.reason, err.detail)
        except Exception as err:  # noqa: BLE001 - recorded on the row and logged, see class docstring
            log.exception("%s stage failed on clip %s (%s)", self.name, row.get("clip_id"), row.get("source_uri"))
            reason, failure = exception_failure(err)
            reject(row, self.name, reason, f"{type(err).__name__}: {err}", failure)

    def process_row(self, row: Row) -> None:
        raise NotImplementedError
