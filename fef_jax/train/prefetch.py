"""Batches prepared off the training loop's critical path.

`Prefetcher` runs a batch iterator and the placement of each batch on the
devices (`sharding.shard_batch`) on a background thread, `size` batches ahead
of the loop, so the host work of step `k + 1` overlaps the device work of step
`k`. Each batch comes with the iterator's `state()` right after it, so a
checkpoint records the position of the last batch the loop *consumed*, not of
the ones prepared ahead: resuming stays bit-identical.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator


class Prefetcher:
  """Iterates `(placed_batch, data_state)` pairs, up to `size` of them prepared ahead.

  `size=0` prepares each batch when it is asked for, on the caller's thread (no
  thread is started). An exception raised by the iterator or by `place` is
  re-raised by the `next` call that would have returned that batch.
  """

  def __init__(self, iterator: Iterator[dict[str, Any]], state_fn: Callable[[], Any],
               place: Callable[[dict[str, Any]], Any], size: int = 2):
    """Args:
      iterator: the batch iterator (touched only by the prefetching thread from now on).
      state_fn: the iterator's position after its latest batch (e.g. `BatchIterator.state`).
      place: puts a host batch on the devices.
      size: batches prepared ahead (0: none; no thread).

    Raises:
      ValueError: `size` is not an int >= 0.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
      raise ValueError(f"prefetch size must be an int >= 0, got {size!r}")
    self._iterator, self._state_fn, self._place = iterator, state_fn, place
    self._size = size
    self._stop = threading.Event()
    self._queue: queue.Queue = queue.Queue(maxsize=max(size, 1))
    self._thread = None
    if size:
      self._thread = threading.Thread(target=self._fill, name="prefetch", daemon=True)
      self._thread.start()

  def _prepare(self) -> tuple[Any, Any]:
    batch = next(self._iterator)
    return self._place(batch), self._state_fn()

  def _fill(self) -> None:
    while not self._stop.is_set():
      try:
        item = self._prepare()
      except BaseException as e:  # pylint: disable=broad-except  # handed to the consumer
        item = e
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item, BaseException):
        return

  def __iter__(self) -> Prefetcher:
    return self

  def __next__(self) -> tuple[Any, Any]:
    """The next `(placed_batch, data_state)`.

    Raises:
      StopIteration: the iterator ended; any exception of the iterator or `place`.
      RuntimeError: called after `close`.
    """
    if self._stop.is_set():
      raise RuntimeError("the prefetcher is closed")
    if not self._size:
      return self._prepare()
    item = self._queue.get()
    if isinstance(item, BaseException):
      self._stop.set()
      raise item
    return item

  def close(self) -> None:
    """Stops the thread (it finishes the batch it is preparing) and drops prepared batches."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    while not self._queue.empty():
      self._queue.get_nowait()

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
