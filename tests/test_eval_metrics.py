"""Tests for fef_jax.eval.metrics, against independent computations."""
import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from fef_jax.eval import metrics


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_interval_matches_scipy(confidence):
  for n in (1, 2, 7, 40, 1319):
    for successes in sorted({0, 1, n // 3, n // 2, n - 1, n}):
      expected = stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")
      low, high = metrics.wilson_interval(successes, n, confidence)
      assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12)
      assert 0.0 <= low <= successes / n <= high <= 1.0


def test_wilson_interval_rejects_bad_input():
  for successes, n, match in ((0, 0, "n must be >= 1"), (-1, 5, "successes must be >= 0"),
                              (6, 5, r"successes \(6\) must be <= n \(5\)"),
                              (1.0, 5, "integer"), (True, 5, "integer")):
    with pytest.raises(ValueError, match=match):
      metrics.wilson_interval(successes, n)
  for confidence in (0.0, 1.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="confidence"):
      metrics.wilson_interval(1, 2, confidence)


def test_proportion_estimate_and_json():
  estimate = metrics.proportion(3, 4)
  assert estimate.value == 0.75 and estimate.n == 4 and estimate.method == "wilson"
  assert (estimate.low, estimate.high) == metrics.wilson_interval(3, 4)
  assert json.loads(json.dumps(estimate.to_json()))["value"] == 0.75


def _pass_at_k_by_enumeration(n, c, k):
  """The fraction of k-subsets of n samples (the first c correct) holding a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(min(subset) < c for subset in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_over_subsets():
  for n in range(1, 9):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert metrics.pass_at_k(n, c, k) == pytest.approx(
            _pass_at_k_by_enumeration(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_matches_binomials_for_large_n():
  for n, c, k in ((200, 13, 10), (200, 1, 100), (1000, 0, 1), (1000, 999, 1), (50, 25, 25)):
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)
  assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_rejects_bad_input():
  for args, match in (((3, 1, 4), r"k \(4\) must be <= n \(3\)"),
                      ((3, 4, 1), r"c \(4\) must be <= n \(3\)"),
                      ((3, -1, 1), "c must be >= 0"), ((0, 0, 1), "n must be >= 1"),
                      ((3, 1, 0), "k must be >= 1"), ((3.0, 1, 1), "integer")):
    with pytest.raises(ValueError, match=match):
      metrics.pass_at_k(*args)


def test_mean_pass_at_k_normal_interval():
  num_correct = [0, 3, 10, 5, 1]
  scores = np.array([metrics.pass_at_k(10, c, 2) for c in num_correct])
  estimate = metrics.mean_pass_at_k(10, num_correct, 2, method="normal")
  half = 1.959963984540054 * scores.std(ddof=1) / math.sqrt(5)
  assert estimate.value == pytest.approx(scores.mean())
  assert (estimate.low, estimate.high) == pytest.approx(
      (max(0.0, scores.mean() - half), min(1.0, scores.mean() + half)))
  assert (estimate.n, estimate.method) == (5, "normal")


def test_mean_pass_at_k_bootstrap_interval():
  rng = np.random.default_rng(1)
  num_samples = rng.integers(5, 20, size=200)
  num_correct = [int(rng.integers(0, n + 1)) for n in num_samples]
  estimate = metrics.mean_pass_at_k(num_samples, num_correct, 5, num_bootstrap=2000)
  normal = metrics.mean_pass_at_k(num_samples, num_correct, 5, method="normal")
  assert estimate.value == pytest.approx(normal.value)
  assert estimate.low < estimate.value < estimate.high
  # With 200 problems the bootstrap and normal intervals nearly agree.
  assert (estimate.low, estimate.high) == pytest.approx((normal.low, normal.high), abs=0.01)
  assert metrics.mean_pass_at_k(num_samples, num_correct, 5, num_bootstrap=2000) == estimate
  all_right = metrics.mean_pass_at_k(3, [3, 3], 1)
  assert (all_right.value, all_right.low, all_right.high) == (1.0, 1.0, 1.0)


def test_mean_pass_at_k_rejects_bad_input():
  with pytest.raises(ValueError, match="at least one problem"):
    metrics.mean_pass_at_k(5, [], 1)
  with pytest.raises(ValueError, match="2 entries but num_correct has 3"):
    metrics.mean_pass_at_k([5, 5], [1, 2, 3], 1)
  with pytest.raises(ValueError, match=r"problem 1: k \(3\) must be <= n \(2\)"):
    metrics.mean_pass_at_k([5, 2], [1, 1], 3)
  with pytest.raises(ValueError, match="method"):
    metrics.mean_pass_at_k(5, [1], 1, method="exact")
  with pytest.raises(ValueError, match="num_bootstrap"):
    metrics.mean_pass_at_k(5, [1], 1, num_bootstrap=0)


def test_generate_batched_keeps_order_and_batches():
  calls = []

  def generate(prompts):
    calls.append(len(prompts))
    return [p.upper() for p in prompts]
  prompts = [f"p{i}" for i in range(10)]
  assert metrics.generate_batched(generate, prompts, batch_size=4, progress=True) == [
      p.upper() for p in prompts]
  assert calls == [4, 4, 2]
  assert metrics.generate_batched(generate, [], batch_size=4) == []


def test_generate_batched_rejects_bad_output():
  with pytest.raises(ValueError, match="batch_size"):
    metrics.generate_batched(lambda p: p, ["a"], batch_size=0)
  with pytest.raises(ValueError, match="returned 1 for a batch of 2"):
    metrics.generate_batched(lambda p: p[:1], ["a", "b"], batch_size=2)
  with pytest.raises(ValueError, match="returned str for a batch"):
    metrics.generate_batched(lambda p: "ab", ["a", "b"], batch_size=2)
  with pytest.raises(ValueError, match="int for prompt 3"):
    metrics.generate_batched(lambda p: [p[0], 0] if p[0] == "c" else p, ["a", "b", "c", "d"],
                             batch_size=2)
