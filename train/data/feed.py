"""The training loop's micro-batches, read ahead so the loop never waits on the dataset iterator's start-up.

`BatchFeed` reads the worker's Ray Data shard (anything with `iter_batches`) in a background thread from the moment it
is started, before the DeepSpeed engine is built, so the first batch is ready when training starts and the next ones
arrive while a step computes. When the shard's batches fit in `cache_bytes` they are kept after the first pass and
later epochs replay them from memory: restarting the shard's iterator every epoch (a streaming split's new epoch, a
barrier across the workers) cost 0.1-3.4 s per epoch boundary on 2 CPU workers. The workers agree on it (all cache or
none: a streaming split starts an epoch only when all its readers do). A shard larger than that (a streamed cluster
run) is read again each epoch, each pass after the second starting in the background while the last batches compute.

Data position: `state.epoch` and `state.micro_in_epoch` (the micro-batches of that epoch already consumed), updated as
the loop takes each batch, never as the thread reads ahead. Every pass over a shard yields the same batches in the same
order (no per-epoch shuffle), so a resumed run skips the first `micro_in_epoch` batches of its first pass.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of `epoch` already consumed (the data position)


class Shard(Protocol):
    def iter_batches(self, **kwargs: Any) -> Iterator[Batch]: ...


@dataclass
class _Plan:
    skip: int  # batches of the first pass a resumed run already consumed
    passes: int  # epochs left, the first one included
    budget: int  # micro-batches the loop will take at most


_END = object()  # the producer has nothing more to give


def batch_bytes(batch: Batch) -> int:
    """Bytes of a numpy batch, the arrays inside ragged (object) columns included."""
    total = 0
    for column in batch.values():
        if column.dtype == object:
            total += sum(getattr(value, "nbytes", 64) for value in column)
        else:
            total += column.nbytes
    return total


class _PassEnd:
    """The first pass is read: whether its batches fit the cache (the loop then decides, with the other workers)."""

    def __init__(self, cacheable: bool) -> None:
        self.cacheable = cacheable


class BatchFeed:
    """Micro-batches from `shard`, read ahead by one background thread into a queue of `prefetch` batches.

    `agree(cacheable)` is called by the training loop once the first pass is consumed and returns whether every worker
    can cache (all-reduced): every worker must decide alike, since a streaming split starts an epoch only when all
    its readers do. None: this worker decides alone (one reader)."""

    def __init__(self, shard: Shard, batch_size: int, cache_bytes: int, prefetch: int = 4,
                 agree: Callable[[bool], bool] | None = None) -> None:
        self.shard, self.batch_size, self.cache_bytes = shard, batch_size, cache_bytes
        self.prefetch, self.agree = prefetch, agree
        self.cached: list[Batch] | None = None  # the first pass, when every worker keeps theirs
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._plan: _Plan | None = None
        self._keep = False
        self._decided = threading.Event()  # set once the plan and the cache decision are known (or on close)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-feed", daemon=True)

    def start(self) -> BatchFeed:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._decided.set()  # a producer waiting for the decision stops too

    def micro_batches(self, state: TrainState, epochs: int, total_steps: int, grad_accum: int) -> Iterator[Batch]:
        """Batches from `state`'s data position to the end of epoch `epochs` or of step `total_steps`, whichever is
        first; `state` follows every batch the caller takes."""
        self._plan = _Plan(skip=state.micro_in_epoch, passes=epochs - state.epoch,
                           budget=max(0, total_steps - state.step) * grad_accum)
        if self._thread.ident is None:  # not started ahead
            self.start()
        first_epoch, skip = state.epoch, state.micro_in_epoch
        try:
            while state.step < total_steps:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _PassEnd):
                    self._keep = self.agree(item.cacheable) if self.agree else item.cacheable
                    self._decided.set()
                    continue
                pass_index, index, batch = item
                if pass_index == 0 and index < skip:
                    continue
                state.epoch, state.micro_in_epoch = first_epoch + pass_index, index + 1
                yield batch
        finally:
            self.close()

    # -- the background thread ------------------------------------------------------------------------------
    def _produce(self) -> None:
        try:
            count, cache = self._first_pass()
            if not count or not self._put(_PassEnd(cache is not None)):
                self._put(_END)
                return
            self._decided.wait()
            plan = self._plan
            if self._stop.is_set() or plan is None:
                return
            self.cached = cache if self._keep else None
            log.info("data shard: %d micro-batches per epoch, %s", count, "kept in memory for the next epochs"
                     if self.cached is not None else "read again each epoch (over data.cache_shard_mb on a worker)")
            passes = min(plan.passes, math.ceil((plan.skip + plan.budget) / count))
            for pass_index in range(1, passes):
                if not self._pass(pass_index):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the training loop, which raises it
            self._put(err)

    def _first_pass(self) -> tuple[int, list[Batch] | None]:
        cache: list[Batch] | None = [] if self.cache_bytes > 0 else None
        size, count = 0, 0
        for count, batch in enumerate(self._iterate(), start=1):
            if cache is not None:
                size += batch_bytes(batch)
                if size <= self.cache_bytes:
                    cache.append(batch)
                else:
                    cache = None
            if not self._put((0, count - 1, batch)):
                return 0, None
        return count, cache

    def _pass(self, pass_index: int) -> bool:
        for index, batch in enumerate(self.cached if self.cached is not None else self._iterate()):
            if not self._put((pass_index, index, batch)):
                return False
        return True

    def _iterate(self) -> Iterator[Batch]:
        # Ray's own prefetch_batches stays at its default: raised to 4, the two runs of the SIGKILL-resume test
        # (tests/train/test_sft_recipe.py) trained on different batches from step 2 in 3 runs of 3; at the default
        # they agree. This thread's queue does the reading ahead.
        return self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy")

    def _put(self, item: object) -> bool:
        """Queues `item` unless the feed was closed meanwhile; False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
