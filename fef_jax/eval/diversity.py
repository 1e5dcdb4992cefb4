"""Repetition checks for generated text: unigram entropy and distinct-n, per sample.

A low judge NLL can be bought with degenerate text ("the the the ..."); these
numbers expose it. Both are computed per sample (one row of token ids) and
averaged over samples by the caller, as in MDLM / ReMDM's entropy column:
- `unigram_entropy`: the entropy in nats of the row's empirical token
  distribution (0 for one repeated token, `log L` for `L` distinct tokens);
- `distinct_n`: distinct n-grams over n-grams in the row (1 when no n-gram
  repeats, `1 / (L - n + 1)` for one repeated token).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def unigram_entropy(ids: Sequence[int]) -> float:
  """Entropy in nats of the token frequencies of `ids`.

  Raises:
    ValueError: `ids` is empty.
  """
  ids = np.asarray(ids).reshape(-1)
  if ids.size == 0:
    raise ValueError("unigram_entropy of an empty sequence is undefined")
  _, counts = np.unique(ids, return_counts=True)
  probs = counts / ids.size
  return float(-(probs * np.log(probs)).sum())


def distinct_n(ids: Sequence[int], n: int) -> float:
  """Distinct n-grams of `ids` over its `len(ids) - n + 1` n-grams.

  Raises:
    ValueError: `n < 1`, or `ids` shorter than `n`.
  """
  ids = np.asarray(ids).reshape(-1)
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  if ids.size < n:
    raise ValueError(f"a sequence of {ids.size} tokens has no {n}-gram")
  grams = np.lib.stride_tricks.sliding_window_view(ids, n)
  return len(np.unique(grams, axis=0)) / grams.shape[0]


def summary(rows_NxG: np.ndarray) -> dict[str, float]:
  """Means over rows of `entropy`, `distinct_2` and `distinct_3`.

  Raises:
    ValueError: no rows, or rows shorter than 3 tokens.
  """
  rows_NxG = np.asarray(rows_NxG)
  if rows_NxG.ndim != 2 or rows_NxG.shape[0] == 0:
    raise ValueError(f"summary needs a non-empty [N, G] array, got shape {rows_NxG.shape}")
  return {"entropy": float(np.mean([unigram_entropy(r) for r in rows_NxG])),
          "distinct_2": float(np.mean([distinct_n(r, 2) for r in rows_NxG])),
          "distinct_3": float(np.mean([distinct_n(r, 3) for r in rows_NxG]))}
