"""Sample statistics: calibration of the goodness-of-fit tests and the TV noise floor."""
import itertools

import numpy as np
import pytest
import scipy.stats

from fef_jax import oracles
from fef_jax import stats


def test_empirical_distribution():
  samples_NxL = np.array([[0, 1], [0, 1], [1, 0], [1, 1]])
  np.testing.assert_allclose(stats.empirical_distribution(samples_NxL, 2),
                             [[0.0, 0.5], [0.25, 0.25]])
  with pytest.raises(ValueError, match="outside"):
    stats.empirical_distribution(np.array([[0, 2]]), 2)  # 2 = the mask id
  with pytest.raises(ValueError, match=r"\[N, L\]"):
    stats.empirical_distribution(np.array([0, 1]), 2)


def test_total_variation():
  assert stats.total_variation([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]) == pytest.approx(0.5)
  assert stats.total_variation(np.eye(2) / 2, np.eye(2) / 2) == 0.0
  with pytest.raises(ValueError, match="equal shapes"):
    stats.total_variation([0.5, 0.5], [1.0])


def test_chi_square_is_calibrated_on_exact_samples():
  probs = np.random.default_rng(0).dirichlet(np.ones(40))
  p_values = []
  for seed in range(200):
    counts = np.random.default_rng(seed + 1).multinomial(20_000, probs)
    p_values.append(stats.chi_square_gof(counts, probs)[2])
  p_values = np.array(p_values)
  assert p_values[:5].min() > 1e-3
  # Under the null, p < 0.05 happens Binomial(200, 0.05) times: 10 +- 3.1.
  assert 1 <= np.sum(p_values < 0.05) <= 22


def test_chi_square_rejects_a_perturbed_distribution():
  probs = np.random.default_rng(0).dirichlet(np.ones(40))
  perturbed = probs.copy()
  shift = 0.2 * min(perturbed[0], perturbed[1])  # TV = shift
  perturbed[0] += shift
  perturbed[1] -= shift
  counts = np.random.default_rng(1).multinomial(100_000, perturbed)
  _, _, p_value = stats.chi_square_gof(counts, probs)
  assert p_value < 1e-8


def test_chi_square_merges_small_cells():
  probs = np.array([0.5, 0.3, 0.19, 0.005, 0.005])
  counts = np.array([45, 33, 20, 1, 1])
  # The pool (expected 1) joins the smallest cell (19): cells 50, 30, 20 vs 45, 33, 22.
  statistic, dof, p_value = stats.chi_square_gof(counts, probs)
  assert dof == 2
  assert statistic == pytest.approx(25 / 50 + 9 / 30 + 4 / 20)
  assert p_value == pytest.approx(scipy.stats.chi2.sf(1.0, 2))
  assert stats.chi_square_gof(counts, probs, min_expected=0.1)[1] == 4
  assert stats.chi_square_gof([3, 2], [0.6, 0.4]) == (0.0, 0, 1.0)  # one pooled cell


def test_chi_square_zero_probability_cells():
  statistic, dof, p_value = stats.chi_square_gof([50, 49, 1], [0.5, 0.5, 0.0])
  assert (statistic, dof, p_value) == (float("inf"), 1, 0.0)
  statistic, dof, p_value = stats.chi_square_gof([50, 50, 0], [0.5, 0.5, 0.0])
  assert (statistic, dof, p_value) == (0.0, 1, 1.0)


def test_chi_square_rejects_bad_inputs():
  with pytest.raises(ValueError, match="same number of cells"):
    stats.chi_square_gof([1, 2], [1.0])
  with pytest.raises(ValueError, match="sum to 1"):
    stats.chi_square_gof([1, 2], [0.6, 0.6])
  with pytest.raises(ValueError, match="non-negative"):
    stats.chi_square_gof([-1, 2], [0.5, 0.5])
  with pytest.raises(ValueError, match="at least one observation"):
    stats.chi_square_gof([0, 0], [0.5, 0.5])


def test_tv_noise_floor_matches_exact_samples():
  probs = np.random.default_rng(0).dirichlet(np.full(32, 2.0))
  n, repeats = 4000, 300
  rng = np.random.default_rng(1)
  tvs = [stats.total_variation(rng.multinomial(n, probs) / n, probs) for _ in range(repeats)]
  # The mean of 300 draws has a standard error of ~1.5% of the mean.
  assert np.mean(tvs) == pytest.approx(stats.expected_tv_noise_floor(probs, n), rel=0.1)


def test_pair_counts():
  samples_NxL = np.array([[0, 1, 2], [0, 1, 0], [2, 2, 2]])
  expected = np.zeros((3, 3), int)
  expected[0, 2], expected[0, 0], expected[2, 2] = 1, 1, 1
  np.testing.assert_array_equal(stats.pair_counts(samples_NxL, 0, 2, 3), expected)
  np.testing.assert_array_equal(stats.pair_counts(samples_NxL, 2, 0, 3), expected.T)
  with pytest.raises(ValueError, match="out of range"):
    stats.pair_counts(samples_NxL, 0, 3, 3)


def _sample_chain(chain, n, seed):
  """int[n, L] exact ancestral samples of a Markov chain (numpy)."""
  rng = np.random.default_rng(seed)
  initial_V = np.asarray(chain.initial_H, np.float64)
  transition_VxV = np.asarray(chain.transition_HxH, np.float64)
  cumulative_VxV = np.cumsum(transition_VxV / transition_VxV.sum(1, keepdims=True), 1)
  tokens_N = rng.choice(chain.vocab_size, n, p=initial_V / initial_V.sum())
  columns = [tokens_N]
  for _ in range(chain.length - 1):
    uniform_N = rng.random(n)
    tokens_N = np.minimum((uniform_N[:, None] > cumulative_VxV[tokens_N]).sum(1),
                          chain.vocab_size - 1)
    columns.append(tokens_N)
  return np.stack(columns, axis=1)


def test_pair_gof_accepts_exact_samples_and_rejects_independent_ones():
  chain = oracles.MarkovChain.sticky(3, 6, stay_prob=0.8)
  pairs = list(itertools.combinations(range(6), 2))
  exact_NxL = _sample_chain(chain, 20_000, seed=0)
  results = stats.pair_gof(exact_NxL, chain, pairs)
  assert [(i, j) for i, j, *_ in results] == pairs
  assert stats.bonferroni([p for *_, p in results]) > 1e-3
  # Each position drawn independently from its marginal: the product of marginals.
  rng = np.random.default_rng(1)
  independent_NxL = np.stack([rng.permutation(column) for column in exact_NxL.T], axis=1)
  results = stats.pair_gof(independent_NxL, chain, pairs)
  assert stats.bonferroni([p for *_, p in results]) < 1e-10


def test_bonferroni():
  assert stats.bonferroni([0.01, 0.5]) == pytest.approx(0.02)
  assert stats.bonferroni([0.6, 0.9]) == 1.0
  with pytest.raises(ValueError, match="at least one"):
    stats.bonferroni([])
