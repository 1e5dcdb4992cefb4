"""Fixed-length training rows and a deterministic, resumable batch iterator.

- `pack`: pretraining rows; documents joined by eos and cut into rows.
- `pad`: prompt-conditioned (SFT) rows; one (prompt, answer) pair per row,
  padded, with masks of the real tokens and of the answer (the only positions
  the forward process may mask).
- `BatchIterator`: batches of in-memory arrays in an order that is a pure
  function of `(seed, epoch)`, with a small JSON-able `state()` to resume from.

It is plain numpy rather than `grain`: the data sets here fit in memory, and
exact resumption is a few lines over a seeded permutation, so a dependency
(and its worker processes) would add more than it saves.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def pack(token_lists: Iterable[Sequence[int]], length: int,
         eos_id: int) -> np.ndarray:
  """tokens_NxL (int32): each list followed by `eos_id`, concatenated, cut into rows.

  The final partial row is dropped, so `N = total // length` where `total`
  counts every token and eos. Rows may start and end mid-document.

  Raises:
    ValueError: `length < 1`, or fewer than `length` tokens in all.
  """
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}.")
  eos_1 = np.array([eos_id], np.int32)
  pieces = [part for tokens in token_lists
            for part in (np.asarray(tokens, np.int32).reshape(-1), eos_1)]
  stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  num_rows = stream.size // length
  if num_rows == 0:
    raise ValueError(f"cannot pack {stream.size} tokens (eos included) into "
                     f"rows of length {length}.")
  return stream[:num_rows * length].reshape(num_rows, length)


def pad(prompt_answer_pairs: Iterable[tuple[Sequence[int], Sequence[int]]],
        length: int, pad_id: int) -> dict[str, np.ndarray]:
  """One row per pair: the prompt, then the answer, then `pad_id` up to `length`.

  Append `eos_id` to variable-length answers before calling, so that the model
  learns where an answer ends (pad positions are not maskable).

  Returns:
    {"tokens": int32[N, L], "valid": bool[N, L] (prompt and answer, not
    padding), "maskable": bool[N, L] (answer positions only)}.

  Raises:
    ValueError: no pairs, `length < 1`, an empty answer or a pair longer than
      `length` (naming the pair's index).
  """
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}.")
  pairs = [(np.asarray(prompt, np.int32).reshape(-1),
            np.asarray(answer, np.int32).reshape(-1))
           for prompt, answer in prompt_answer_pairs]
  if not pairs:
    raise ValueError("no (prompt, answer) pairs to pad.")
  tokens_NxL = np.full((len(pairs), length), pad_id, np.int32)
  valid_NxL = np.zeros((len(pairs), length), bool)
  maskable_NxL = np.zeros((len(pairs), length), bool)
  for row, (prompt, answer) in enumerate(pairs):
    end = prompt.size + answer.size
    if answer.size == 0:
      raise ValueError(f"pair {row} has an empty answer.")
    if end > length:
      raise ValueError(f"pair {row} has {prompt.size} prompt + {answer.size} "
                       f"answer tokens, more than length {length}.")
    tokens_NxL[row, :end] = np.concatenate([prompt, answer])
    valid_NxL[row, :end] = True
    maskable_NxL[row, prompt.size:end] = True
  return {"tokens": tokens_NxL, "valid": valid_NxL, "maskable": maskable_NxL}


def epoch_order(num_examples: int, seed: int, epoch: int,
                shuffle: bool = True) -> np.ndarray:
  """The example order of one epoch: a permutation of `range(num_examples)`.

  A pure function of its arguments (numpy's PCG64 seeded with `[seed, epoch]`);
  the identity when `shuffle` is False.
  """
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


class BatchIterator:
  """Endless batches of `arrays`, epoch after epoch, resumable exactly.

  Epoch `e` visits the examples in `epoch_order(N, seed, e, shuffle)` and
  yields `N // batch_size` full batches; the last `N % batch_size` examples of
  each epoch's order are skipped (others each epoch when shuffled), so every
  batch has the same shape.

  `state()` after `k` batches, passed to `restore` on a new iterator built
  with the same arrays, batch size, seed and `shuffle`, makes it yield exactly
  batches `k+1, k+2, ...` of an uninterrupted run.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int,
               seed: int, shuffle: bool = True):
    """Iterates over the leading axis of every array in `arrays`, in step.

    Args:
      arrays: name -> array `[N, ...]`, all with the same `N >= 1`.
      batch_size: examples per batch, in `[1, N]`.
      seed: a non-negative integer; with the epoch it fixes the order.
      shuffle: False to visit examples in order every epoch.

    Raises:
      ValueError: no arrays, a scalar or a leading size that differs, a
        batch size outside `[1, N]`, or a negative seed.
    """
    if not arrays:
      raise ValueError("arrays is empty.")
    self._arrays = {name: np.asarray(array) for name, array in arrays.items()}
    sizes = {name: array.shape[0] if array.ndim else None
             for name, array in self._arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
      raise ValueError(f"arrays need one common leading size; got {sizes}.")
    self._num_examples = next(iter(sizes.values()))
    if not 1 <= batch_size <= self._num_examples:
      raise ValueError(f"batch_size must be in [1, {self._num_examples}], got "
                       f"{batch_size}.")
    if seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}.")
    self._batch_size = batch_size
    self._seed = int(seed)
    self._shuffle = shuffle
    self._epoch = 0
    self._position = 0
    self._order = epoch_order(self._num_examples, self._seed, 0, shuffle)

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    """The next batch: name -> `array[indices]`, shape `[batch_size, ...]`."""
    if self._position + self._batch_size > self._num_examples:
      self._epoch += 1
      self._position = 0
      self._order = epoch_order(self._num_examples, self._seed, self._epoch,
                                self._shuffle)
    indices = self._order[self._position:self._position + self._batch_size]
    self._position += self._batch_size
    return {name: array[indices] for name, array in self._arrays.items()}

  def state(self) -> dict[str, int | bool]:
    """The iterator's position as a small JSON-able dict.

    Keys: "seed", "shuffle", "num_examples" (identify the stream), "epoch" and
    "position" (examples of `epoch` already yielded).
    """
    return {"seed": self._seed, "shuffle": self._shuffle,
            "num_examples": self._num_examples, "epoch": self._epoch,
            "position": self._position}

  def restore(self, state: Mapping[str, int | bool]) -> None:
    """Continues from `state` (from `state()`, possibly via JSON).

    Raises:
      ValueError: missing keys, or a seed, shuffle or number of examples that
        differs from this iterator's (a different data stream), or an epoch or
        position out of range.
    """
    expected = self.state()
    missing = sorted(set(expected) - set(state))
    if missing:
      raise ValueError(f"iterator state lacks {missing}: {dict(state)}.")
    for key in ("seed", "shuffle", "num_examples"):
      if state[key] != expected[key]:
        raise ValueError(f"iterator state has {key}={state[key]!r} but this "
                         f"iterator has {expected[key]!r}.")
    epoch, position = int(state["epoch"]), int(state["position"])
    if epoch < 0 or not 0 <= position <= self._num_examples:
      raise ValueError(f"iterator state epoch={epoch} position={position} out "
                       f"of range for {self._num_examples} examples.")
    self._epoch = epoch
    self._position = position
    self._order = epoch_order(self._num_examples, self._seed, epoch,
                              self._shuffle)
