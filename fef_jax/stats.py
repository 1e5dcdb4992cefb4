"""Statistics that compare samples with an exact distribution (host-side numpy/scipy).

Used by tests and experiments to decide whether a sampler reproduces an oracle's
joint distribution (`fef_jax.oracles`): total variation against its sampling-noise
floor, and Pearson goodness-of-fit tests on whole sequences or on position pairs.
None of these functions is jitted; they take and return numpy values.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
# The chi-square tail from scipy.special: scipy.stats takes ~0.5 s to import, which every
# `import fef_jax` would pay.
import scipy.special

_MAX_HISTOGRAM_CELLS = 2**24
_SUM_TOLERANCE = 1e-4


class PairOracle(Protocol):
  """Anything with exact pair marginals (every oracle in `fef_jax.oracles`)."""

  vocab_size: int

  def pair_marginal(self, i: int, j: int) -> np.ndarray:
    ...


def _check_samples(samples_NxL: np.ndarray, vocab_size: int) -> np.ndarray:
  """`samples_NxL` as int64; ValueError unless a non-empty [N, L] array of tokens < V."""
  samples_NxL = np.asarray(samples_NxL)
  if samples_NxL.ndim != 2 or samples_NxL.shape[0] == 0:
    raise ValueError(f"samples must be a non-empty [N, L] array, got shape "
                     f"{samples_NxL.shape}.")
  if not np.issubdtype(samples_NxL.dtype, np.integer):
    raise ValueError(f"samples must be integer tokens, got dtype {samples_NxL.dtype}.")
  if samples_NxL.min() < 0 or samples_NxL.max() >= vocab_size:
    raise ValueError(f"samples hold tokens outside [0, {vocab_size}) (range "
                     f"{samples_NxL.min()}..{samples_NxL.max()}); unfinished "
                     f"samples still holding the mask id cannot be counted.")
  return samples_NxL.astype(np.int64)


def empirical_distribution(samples_NxL: np.ndarray, vocab_size: int) -> np.ndarray:
  """float64[V, ..., V] (L axes): the fraction of samples equal to each sequence.

  Raises:
    ValueError: samples not a non-empty integer [N, L] array with tokens in
      [0, V), or more than 2^24 cells (V^L).
  """
  samples_NxL = _check_samples(samples_NxL, vocab_size)
  length = samples_NxL.shape[1]
  if vocab_size**length > _MAX_HISTOGRAM_CELLS:
    raise ValueError(f"vocab_size^length = {vocab_size**length} cells exceed the "
                     f"{_MAX_HISTOGRAM_CELLS} supported.")
  shape = (vocab_size,) * length
  index_N = np.ravel_multi_index(tuple(samples_NxL.T), shape)
  counts = np.bincount(index_N, minlength=vocab_size**length)
  return (counts / samples_NxL.shape[0]).reshape(shape)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
  """0.5 * sum |p - q| over all cells; ValueError if the shapes differ."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  if p.shape != q.shape:
    raise ValueError(f"total_variation needs equal shapes, got {p.shape} and {q.shape}.")
  return 0.5 * float(np.abs(p - q).sum())


def expected_tv_noise_floor(p: np.ndarray, n: int) -> float:
  """Approximate E[TV(p, empirical distribution of n exact samples from p)].

  Each cell count X ~ Binomial(n, p) is replaced by its normal approximation, for
  which E|X - n p| = sqrt(2 n p (1 - p) / pi); so the floor is
  0.5 * sum_x sqrt(2 p(x) (1 - p(x)) / (pi n)). This is an approximation: accurate
  when n p (1 - p) is large in the cells that carry the mass, and an overestimate
  for cells with n p << 1.

  Raises:
    ValueError: n < 1, or p negative or non-finite.
  """
  p = np.asarray(p, np.float64)
  if not np.all(np.isfinite(p)) or np.any(p < 0):
    raise ValueError("p must hold finite, non-negative probabilities.")
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}.")
  return 0.5 * float(np.sqrt(2.0 * p * (1.0 - p) / (np.pi * n)).sum())


def _merge_small_cells(observed: np.ndarray, expected: np.ndarray,
                       min_expected: float) -> tuple[np.ndarray, np.ndarray]:
  """Pools every cell with expected count < min_expected into one cell.

  While the pool's expected count is still below min_expected, the smallest
  remaining cell joins it. Returns (observed, expected) of the resulting cells.
  """
  small = expected < min_expected
  if not small.any():
    return observed, expected
  pool_observed, pool_expected = observed[small].sum(), expected[small].sum()
  order = np.argsort(expected[~small], kind="stable")
  rest_observed, rest_expected = observed[~small][order], expected[~small][order]
  joined = 0
  while pool_expected < min_expected and joined < rest_expected.size:
    pool_observed += rest_observed[joined]
    pool_expected += rest_expected[joined]
    joined += 1
  return (np.append(rest_observed[joined:], pool_observed),
          np.append(rest_expected[joined:], pool_expected))


def chi_square_gof(counts: np.ndarray, probs: np.ndarray,
                   min_expected: float = 5.0) -> tuple[float, int, float]:
  """Pearson's chi-square goodness-of-fit test of `counts` against `probs`.

  Cells with expected count n * p < min_expected are pooled into one cell (see
  `_merge_small_cells`). A positive count in a cell of probability exactly 0
  is an impossible outcome: the test then returns statistic inf and p-value 0.
  With fewer than two cells left the test has no power and returns (0, 0, 1).

  Args:
    counts: observed counts, any shape.
    probs: cell probabilities of the same shape, summing to 1 within 1e-4
      (renormalized; float32 oracle marginals are accepted).
    min_expected: smallest expected count of a cell.

  Returns:
    (statistic, degrees of freedom = cells - 1, p-value from chi2.sf).

  Raises:
    ValueError: shape mismatch, negative or non-finite counts or probabilities,
      probabilities not summing to 1, or no observations.
  """
  counts = np.asarray(counts, np.float64).ravel()
  probs = np.asarray(probs, np.float64).ravel()
  if counts.shape != probs.shape:
    raise ValueError(f"counts and probs need the same number of cells, got "
                     f"{counts.size} and {probs.size}.")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    raise ValueError("counts must be finite and non-negative.")
  if not np.all(np.isfinite(probs)) or np.any(probs < 0):
    raise ValueError("probs must be finite and non-negative.")
  if abs(probs.sum() - 1.0) > _SUM_TOLERANCE:
    raise ValueError(f"probs must sum to 1 (within {_SUM_TOLERANCE}), got {probs.sum()}.")
  n = counts.sum()
  if n <= 0:
    raise ValueError("chi_square_gof needs at least one observation.")
  support = probs > 0
  observed, expected = _merge_small_cells(
      counts[support], n * probs[support] / probs.sum(), min_expected)
  dof = expected.size - 1
  if counts[~support].sum() > 0:
    return float("inf"), dof, 0.0
  if dof < 1:
    return 0.0, 0, 1.0
  statistic = float(np.sum((observed - expected) ** 2 / expected))
  return statistic, dof, float(scipy.special.chdtrc(dof, statistic))


def pair_counts(samples_NxL: np.ndarray, i: int, j: int, vocab_size: int) -> np.ndarray:
  """int64[V, V]: how many samples have x_i = a and x_j = b.

  Raises:
    ValueError: bad samples (see `empirical_distribution`) or positions out of range.
  """
  samples_NxL = _check_samples(samples_NxL, vocab_size)
  length = samples_NxL.shape[1]
  if not (0 <= i < length and 0 <= j < length):
    raise ValueError(f"positions ({i}, {j}) out of range [0, {length}).")
  index_N = samples_NxL[:, i] * vocab_size + samples_NxL[:, j]
  return np.bincount(index_N, minlength=vocab_size**2).reshape(vocab_size, vocab_size)


def pair_gof(samples_NxL: np.ndarray, oracle: PairOracle,
             pairs: Sequence[tuple[int, int]],
             min_expected: float = 5.0) -> list[tuple[int, int, float, int, float]]:
  """Chi-square tests of the samples' (x_i, x_j) counts against the oracle's pair marginals.

  Args:
    samples_NxL: complete samples, tokens in [0, oracle.vocab_size).
    oracle: supplies `pair_marginal(i, j)` and `vocab_size`.
    pairs: (i, j) position pairs, i != j.
    min_expected: see `chi_square_gof`.

  Returns:
    One (i, j, statistic, dof, p_value) per pair; combine with `bonferroni`.
  """
  results = []
  for i, j in pairs:
    counts_VxV = pair_counts(samples_NxL, i, j, oracle.vocab_size)
    probs_VxV = np.asarray(oracle.pair_marginal(i, j), np.float64)
    statistic, dof, p_value = chi_square_gof(counts_VxV, probs_VxV, min_expected)
    results.append((i, j, statistic, dof, p_value))
  return results


def bonferroni(p_values: Sequence[float]) -> float:
  """min(1, m * min(p)): a p-value for "all m null hypotheses hold".

  Raises:
    ValueError: no p-values.
  """
  p_values = np.asarray(p_values, np.float64)
  if p_values.size == 0:
    raise ValueError("bonferroni needs at least one p-value.")
  return float(min(1.0, p_values.size * p_values.min()))
