"""The two-sample test that says whether two samplers' judge scores differ.

Mann-Whitney U (Wilcoxon rank-sum), two-sided, with the normal approximation,
the tie correction of the variance and a continuity correction (Lehmann,
"Nonparametrics", 1975, ch. 1): rank both samples together (ties get their
average rank), `U = R_x - n_x (n_x + 1) / 2` with `R_x` the rank sum of `x`;
under the null hypothesis that `x` and `y` are draws of one distribution,
`E U = n_x n_y / 2` and
`Var U = n_x n_y / 12 * (n + 1 - sum_t (t^3 - t) / (n (n - 1)))`
over tie groups of size `t`, `n = n_x + n_y`. It tests whether
`P(X > Y) + P(X = Y) / 2` differs from 1/2 (one sampler's scores tend to be
higher), makes no normality assumption about per-sample NLL, and is
insensitive to a few outlying samples. Use at least ~10 per sample for the
normal approximation.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RankTest:
  """A Mann-Whitney U test's result.

  Attributes:
    u: `U` of the first sample.
    p_value: two-sided p-value, in `[0, 1]`.
    prob_greater: `U / (n_x n_y)`, the estimate of `P(X > Y) + P(X = Y) / 2`
      (0.5: neither tends to be larger).
  """
  u: float
  p_value: float
  prob_greater: float


def average_ranks(values: np.ndarray) -> np.ndarray:
  """float64 ranks `1..n` of `values` (1-D), tied values sharing their average rank."""
  unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  del unique
  first_rank = np.cumsum(counts) - counts + 1
  return (first_rank + (counts - 1) / 2.0)[inverse]


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> RankTest:
  """The two-sided Mann-Whitney U test of `x` against `y` (see the module docstring).

  Raises:
    ValueError: an empty sample or a non-finite value.
  """
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  if x.size == 0 or y.size == 0:
    raise ValueError(f"both samples need values, got sizes {x.size} and {y.size}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("the samples hold NaN or infinite values")
  nx, ny = x.size, y.size
  n = nx + ny
  pooled = np.concatenate([x, y])
  u = float(average_ranks(pooled)[:nx].sum() - nx * (nx + 1) / 2.0)
  _, ties = np.unique(pooled, return_counts=True)
  tie_term = float(((ties**3) - ties).sum()) / (n * (n - 1)) if n > 1 else 0.0
  variance = nx * ny / 12.0 * (n + 1 - tie_term)
  if variance <= 0:  # every value equal: no evidence of a difference
    return RankTest(u=u, p_value=1.0, prob_greater=u / (nx * ny))
  z = max(abs(u - nx * ny / 2.0) - 0.5, 0.0) / math.sqrt(variance)
  p_value = min(1.0, 2.0 * (1.0 - statistics.NormalDist().cdf(z)))
  return RankTest(u=u, p_value=p_value, prob_greater=u / (nx * ny))
