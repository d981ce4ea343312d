"""train.data.feed: the shard read ahead in a thread, cached after the first pass when small, and the data position
(epoch, micro-batch) kept exactly as the loop consumes, so a resume yields exactly the batches not yet trained on."""

import threading

import numpy as np
import pytest

from train.data.feed import BatchFeed, TrainState, batch_bytes


class Shard:
    """Stands in for a Ray Train dataset shard: `rows` rows in batches, each pass counted."""

    def __init__(self, rows: int = 5, fail_at: int | None = None) -> None:
        self.rows, self.fail_at = rows, fail_at
        self.passes = 0
        self.started = threading.Event()
        self.kwargs: list[dict] = []

    def iter_batches(self, **kwargs):
        self.passes += 1
        self.kwargs.append(kwargs)
        self.started.set()
        for row in range(self.rows):
            if row == self.fail_at:
                raise RuntimeError("storage went away")
            yield {"row": np.array([row]), "ids": np.array([np.arange(row + 1)], dtype=object)}


def _consume(feed, state, epochs, total_steps, grad_accum=1):
    """What the training loop does: one optimizer step per `grad_accum` batches; returns (epoch, micro, row) seen."""
    seen = []
    for micro, batch in enumerate(feed.micro_batches(state, epochs, total_steps, grad_accum), start=1):
        seen.append((state.epoch, state.micro_in_epoch, int(batch["row"][0])))
        if micro % grad_accum == 0:
            state.step += 1
    return seen


def _epochs(rows, epochs, start=0):
    return [(e, i + 1, i) for e in range(start, epochs) for i in range(rows)]


def test_a_small_shard_is_read_once_and_replayed_in_the_same_order_every_epoch():
    shard = Shard(rows=5)
    state = TrainState()
    seen = _consume(BatchFeed(shard, batch_size=1, cache_bytes=1 << 20, prefetch=2).start(), state, 3, 100)
    assert seen == _epochs(5, 3)
    assert shard.passes == 1
    assert shard.kwargs[0] == {"batch_size": 1, "batch_format": "numpy"}
    assert (state.epoch, state.micro_in_epoch) == (2, 5)


def test_a_shard_over_the_cache_size_is_read_again_each_epoch_with_the_same_batches():
    one = batch_bytes({"row": np.array([0]), "ids": np.array([np.arange(1)], dtype=object)})
    shard = Shard(rows=5)
    seen = _consume(BatchFeed(shard, batch_size=1, cache_bytes=3 * one), TrainState(), 3, 100)
    assert seen == _epochs(5, 3)
    assert shard.passes == 3


def test_every_worker_caches_or_none_does():
    """A worker whose shard fits reads it again when another worker's does not (the all-reduced answer)."""
    asked = []

    def agree(cacheable):
        asked.append(cacheable)
        return False  # another worker's shard is over the limit

    shard = Shard(rows=4)
    seen = _consume(BatchFeed(shard, batch_size=1, cache_bytes=1 << 20, agree=agree), TrainState(), 3, 100)
    assert seen == _epochs(4, 3) and shard.passes == 3 and asked == [True]


@pytest.mark.parametrize("cache_bytes", [1 << 20, 0])
def test_a_resumed_run_gets_exactly_the_batches_after_its_data_position(cache_bytes):
    shard = Shard(rows=5)
    state = TrainState(step=7, epoch=1, micro_in_epoch=2)  # 7 steps of 1 micro-batch: epoch 0 + 2 of epoch 1
    seen = _consume(BatchFeed(shard, batch_size=1, cache_bytes=cache_bytes), state, 3, 100)
    assert seen == [(1, 3, 2), (1, 4, 3), (1, 5, 4)] + _epochs(5, 3, start=2)
    assert state.step == 15
    # An uninterrupted run sees the same batches after its 7th step.
    assert _consume(BatchFeed(Shard(rows=5), 1, cache_bytes), TrainState(), 3, 100)[7:] == seen


def test_the_loop_stops_at_total_steps_and_no_pass_beyond_the_last_needed_one_starts():
    shard = Shard(rows=4)
    state = TrainState()
    seen = _consume(BatchFeed(shard, batch_size=1, cache_bytes=0), state, 10, total_steps=3, grad_accum=2)
    assert [row for _, _, row in seen] == [0, 1, 2, 3, 0, 1]  # 3 steps x 2 micro-batches
    assert (state.step, state.epoch, state.micro_in_epoch) == (3, 1, 2)
    assert shard.passes == 2  # not the 10 epochs the config allows

    resumed = TrainState(step=2, epoch=1, micro_in_epoch=0)  # a checkpoint at the end of epoch 0 ...
    shard = Shard(rows=4)
    seen = _consume(BatchFeed(shard, batch_size=1, cache_bytes=0), resumed, 10, total_steps=3, grad_accum=2)
    assert seen == [(1, 1, 0), (1, 2, 1)] and shard.passes == 1
    # ... or at its last batch, before the loop moved on (epoch 0, all 4 consumed): the same next batches.
    seen = _consume(BatchFeed(Shard(rows=4), 1, 0), TrainState(step=2, epoch=0, micro_in_epoch=4), 10, 3, 2)
    assert seen == [(1, 1, 0), (1, 2, 1)]


def test_the_first_batch_is_read_before_the_loop_asks_for_it():
    shard = Shard(rows=3)
    feed = BatchFeed(shard, batch_size=1, cache_bytes=1 << 20, prefetch=2).start()
    assert shard.started.wait(timeout=30)  # started while the caller did something else (the engine's set-up)
    assert _consume(feed, TrainState(), 1, 100) == _epochs(3, 1)


def test_a_read_error_reaches_the_training_loop():
    feed = BatchFeed(Shard(rows=5, fail_at=3), batch_size=1, cache_bytes=1 << 20)
    with pytest.raises(RuntimeError, match="storage went away"):
        _consume(feed, TrainState(), 2, 100)


def test_batch_bytes_counts_the_arrays_inside_ragged_columns():
    batch = {"ids": np.array([np.zeros(10, np.int64), np.zeros(3, np.int64)], dtype=object),
             "n": np.zeros(4, np.float32)}
    assert batch_bytes(batch) == 10 * 8 + 3 * 8 + 4 * 4
