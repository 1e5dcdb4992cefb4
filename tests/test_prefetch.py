"""The prefetcher yields the iterator's batches in order, each with the position after it."""
import threading

import numpy as np
import pytest

from fef_jax.data import pipeline
from fef_jax.train import prefetch


def _iterator():
  return pipeline.BatchIterator({"tokens": np.arange(40).reshape(20, 2)}, batch_size=3, seed=7)


@pytest.mark.parametrize("size", [0, 1, 3])
def test_batches_and_positions_equal_the_plain_iterator(size):
  plain, ahead = _iterator(), _iterator()
  placed_on = set()

  def place(batch):
    placed_on.add(threading.current_thread().name)
    return {name: value * 10 for name, value in batch.items()}

  with prefetch.Prefetcher(ahead, ahead.state, place, size=size) as batches:
    for _ in range(15):  # more than one epoch
      batch, data_state = next(batches)
      expected = next(plain)
      np.testing.assert_array_equal(batch["tokens"], expected["tokens"] * 10)
      assert data_state == plain.state()
  assert placed_on == ({"prefetch"} if size else {threading.current_thread().name})


def test_resuming_from_a_consumed_position_continues_the_stream():
  ahead = _iterator()
  with prefetch.Prefetcher(ahead, ahead.state, lambda b: b, size=4) as batches:
    for _ in range(5):
      _, data_state = next(batches)
    following = next(batches)[0]
  resumed = _iterator()
  resumed.restore(data_state)  # not the prefetching iterator's position, 4 batches further
  np.testing.assert_array_equal(next(resumed)["tokens"], following["tokens"])


def test_an_error_while_preparing_reaches_the_consumer_in_order():
  calls = []

  def place(batch):
    calls.append(1)
    if len(calls) == 3:
      raise OSError("device gone")
    return batch

  ahead = _iterator()
  with prefetch.Prefetcher(ahead, ahead.state, place, size=2) as batches:
    next(batches), next(batches)
    with pytest.raises(OSError, match="device gone"):
      next(batches)
    with pytest.raises(RuntimeError, match="closed"):
      next(batches)


def test_close_stops_the_thread_and_bad_sizes_are_refused():
  ahead = _iterator()
  batches = prefetch.Prefetcher(ahead, ahead.state, lambda b: b, size=2)
  next(batches)
  batches.close()
  assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
  for size in (-1, 1.5, True):
    with pytest.raises(ValueError, match="prefetch size"):
      prefetch.Prefetcher(ahead, ahead.state, lambda b: b, size=size)
