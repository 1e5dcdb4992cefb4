"""Tests for fef_jax.forward: time sampling and the masked forward process."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fef_jax import forward
from fef_jax import schedules
from tests import roundoff

EPS = 1e-3
VOCAB = 50
MASK_ID = VOCAB  # outside the vocabulary, as for an appended mask token

# Statistical tests share one shape and call q_sample eagerly, so that its ops
# compile once for all schedules.
BATCH, LENGTH = 32, 1 << 15

_q_sample_jit = jax.jit(forward.q_sample, static_argnames=("schedule",
                                                           "mask_id"))
_sample_times_jit = jax.jit(forward.sample_times,
                            static_argnames=("batch_size", "eps",
                                             "antithetic"))


def _tokens(seed, batch_size, length):
  return np.random.default_rng(seed).integers(0, VOCAB, (batch_size, length),
                                              dtype=np.int32)


@pytest.mark.parametrize("name", ["linear", "cosine", "geometric",
                                  "log_linear"])
def test_masking_rate_matches_schedule(name):
  schedule = schedules.get_schedule(name)
  length = LENGTH
  t_B = jnp.linspace(EPS, 1.0, BATCH)
  x0 = _tokens(0, BATCH, length)
  xt = forward.q_sample(jax.random.PRNGKey(1), x0, t_B, schedule, MASK_ID)
  count_B = np.asarray((xt == MASK_ID).sum(axis=1), np.float64)
  p_B = 1.0 - np.asarray(schedule.alpha(t_B), np.float64)
  # The masked count of a row is Binomial(L, p): mean L p, variance
  # L p (1 - p). Per row allow 5 standard deviations (two-sided 6e-7) plus 1
  # for the float32 rounding of p and the count's discreteness at p ~ 0 or 1.
  sd_B = np.sqrt(length * p_B * (1.0 - p_B))
  np.testing.assert_array_less(np.abs(count_B - length * p_B), 5.0 * sd_B + 1)
  # Pooled over the rows (a bias too small for any one row to show): where
  # the normal approximation holds (variance >= 5), row z-scores are ~N(0, 1),
  # so their sum over sqrt(#rows) is ~N(0, 1) and their sum of squares is
  # ~chi^2 with #rows degrees of freedom.
  normal = sd_B**2 >= 5.0
  z_B = (count_B - length * p_B)[normal] / sd_B[normal]
  assert abs(z_B.sum() / math.sqrt(z_B.size)) < 5.0
  assert np.sum(z_B**2) < scipy.stats.chi2.ppf(1.0 - 1e-6, z_B.size)


def test_unmaskable_positions_are_never_masked():
  x0 = _tokens(0, BATCH, LENGTH)
  maskable = np.random.default_rng(1).random((BATCH, LENGTH)) < 0.5
  t_B = jnp.linspace(0.5, 1.0, BATCH)  # the last row has alpha(1) = 0
  xt = forward.q_sample(jax.random.PRNGKey(2), x0, t_B, schedules.linear(),
                        MASK_ID, maskable)
  xt, x0, maskable = map(np.asarray, (xt, x0, maskable))
  np.testing.assert_array_equal(xt[~maskable], x0[~maskable])
  assert np.all(xt[-1][maskable[-1]] == MASK_ID)
  # Rows at t >= 0.5 mask about half or more of their maskable tokens.
  assert np.all((xt == MASK_ID).sum(axis=1) > 0.4 * maskable.sum(axis=1))


def test_unmasked_tokens_are_unchanged():
  x0 = _tokens(0, BATCH, LENGTH).astype(np.int16)
  t_B = jnp.linspace(EPS, 1.0, BATCH)
  xt = forward.q_sample(jax.random.PRNGKey(1), x0, t_B, schedules.cosine(),
                        MASK_ID)
  assert xt.dtype == jnp.int16 and xt.shape == x0.shape
  xt, x0 = np.asarray(xt), np.asarray(x0)
  kept = xt != MASK_ID
  np.testing.assert_array_equal(xt[kept], x0[kept])
  assert 0 < kept.sum() < kept.size


def test_q_sample_jit_matches_no_jit():
  x0 = _tokens(0, 4, 64)
  t_B = jnp.asarray([0.1, 0.4, 0.7, 1.0])
  maskable = jnp.arange(64)[None, :] >= jnp.asarray([0, 8, 16, 32])[:, None]
  key = jax.random.PRNGKey(3)
  schedule = schedules.polynomial(2.0)
  np.testing.assert_array_equal(
      _q_sample_jit(key, x0, t_B, schedule, MASK_ID, maskable),
      forward.q_sample(key, x0, t_B, schedule, MASK_ID, maskable))


@pytest.mark.parametrize("kwargs,match", [
    ({"x0_BxL": jnp.zeros((2, 3))}, "integer"),
    ({"x0_BxL": jnp.zeros((6,), jnp.int32)}, "2-D"),
    ({"t_B": jnp.zeros((3,))}, r"t_B has shape \(3,\), expected \(2,\)"),
    ({"t_B": jnp.zeros((2, 1))}, "t_B has shape"),
    ({"mask_id": -1}, "mask_id"),
    ({"mask_id": 3.0}, "mask_id"),
    ({"x0_BxL": jnp.zeros((2, 3), jnp.uint8), "mask_id": 256}, "mask_id"),
    ({"maskable_BxL": jnp.ones((2, 4), bool)}, r"maskable_BxL.*\(2, 4\)"),
    ({"maskable_BxL": jnp.ones((2, 3), jnp.int32)}, "bool"),
])
def test_q_sample_rejects_bad_arguments(kwargs, match):
  args = {"key": jax.random.PRNGKey(0), "x0_BxL": jnp.zeros((2, 3), jnp.int32),
          "t_B": jnp.zeros((2,)), "schedule": schedules.linear(),
          "mask_id": MASK_ID, "maskable_BxL": None}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    forward.q_sample(**args)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_antithetic_times_are_stratified(batch_size):
  keys = jax.random.split(jax.random.PRNGKey(0), 100)
  t_KxB = np.asarray(jax.vmap(functools.partial(
      forward.sample_times, batch_size=batch_size, eps=EPS))(keys), np.float64)
  assert np.all((t_KxB >= EPS) & (t_KxB <= 1.0))
  # Position in units of the stratum width (1 - eps) / B; the sorted positions
  # must fall one in each of [k, k + 1). float32 times carry ~1e-7 absolute
  # error, i.e. up to 64 * 1e-7 < 1e-4 strata, hence the slack.
  pos_KxB = np.sort((t_KxB - EPS) / ((1.0 - EPS) / batch_size), axis=1)
  strata = np.arange(batch_size)
  assert np.all(pos_KxB >= strata - 1e-4)
  assert np.all(pos_KxB < strata + 1 + 1e-4)
  # Hence the batch mean lies within half a stratum of the mean of U[eps, 1].
  assert np.all(np.abs(t_KxB.mean(axis=1) - (1.0 + EPS) / 2)
                <= (1.0 - EPS) / (2 * batch_size) + 1e-6)


@pytest.mark.parametrize("antithetic", [True, False])
def test_times_are_marginally_uniform(antithetic):
  # Column 0 of antithetic batches, or every iid time, over many keys: compare
  # with U[eps, 1] by a Kolmogorov-Smirnov test; its p-value is uniform under
  # the null, so p < 1e-4 would be a 1-in-10^4 fluke.
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  t_KxB = jax.vmap(functools.partial(forward.sample_times, batch_size=8,
                                     eps=EPS, antithetic=antithetic))(keys)
  samples = np.asarray(t_KxB[:, 0] if antithetic else t_KxB.ravel())
  assert np.all((samples >= EPS) & (samples <= 1.0))
  result = scipy.stats.kstest(samples, scipy.stats.uniform(EPS, 1.0 - EPS).cdf)
  assert result.pvalue > 1e-4


def test_iid_times_are_not_stratified():
  t_B = np.asarray(forward.sample_times(jax.random.PRNGKey(0), 64, eps=EPS,
                                        antithetic=False))
  strata = np.floor((t_B - EPS) / ((1.0 - EPS) / 64))
  # 64 iid uniforms hit all 64 strata with probability 64! / 64^64 ~ 1e-27.
  assert len(np.unique(strata)) < 64


def test_sample_times_jit_matches_no_jit():
  key = jax.random.PRNGKey(5)
  for antithetic in (True, False):
    # Same uniforms; XLA may fuse (and so round) differently, e.g. eps + (1 - eps) u
    # into one rounding or i / B into i * (1 / B). Each side rounds i / B (2 u at most,
    # values <= 1), u + i / B (u, < 2; the mod by 1 is exact), the constant 1 - eps and
    # the product (u each, values <= 1) and the sum with eps (u, <= 1): 6 u in absolute
    # terms whatever the time's size (so no relative bound: times near eps carry the
    # same absolute error as times near 1).
    roundoff.assert_within(
        _sample_times_jit(key, 16, eps=EPS, antithetic=antithetic),
        forward.sample_times(key, 16, eps=EPS, antithetic=antithetic),
        2 * roundoff.gamma(6), f"antithetic={antithetic}")


@pytest.mark.parametrize("batch_size", [0, -3, 2.0, True])
def test_sample_times_rejects_bad_batch_size(batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    forward.sample_times(jax.random.PRNGKey(0), batch_size)


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.5, 2.0])
def test_sample_times_rejects_eps_outside_unit_interval(eps):
  with pytest.raises(ValueError, match="eps"):
    forward.sample_times(jax.random.PRNGKey(0), 4, eps=eps)
