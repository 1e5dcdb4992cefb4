"""Tests for fef_jax.schedules: values, derivatives, weights, validation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax import schedules
from tests import roundoff

SCHEDULES = {
    "linear": schedules.linear(),
    "cosine": schedules.cosine(),
    "polynomial_2": schedules.polynomial(2.0),
    "polynomial_0.5": schedules.polynomial(0.5),
    "geometric": schedules.geometric(),
    "log_linear": schedules.log_linear(),
}


def _reference_alpha(name, t):
  """alpha(t) from the defining formulas, in float64 numpy."""
  return {
      "linear": lambda: 1.0 - t,
      "cosine": lambda: 1.0 - np.cos(0.5 * np.pi * (1.0 - t)),
      "polynomial_2": lambda: 1.0 - t**2,
      "polynomial_0.5": lambda: 1.0 - t**0.5,
      "geometric": lambda: np.exp(-(1e-4**(1.0 - t)) * 20.0**t),
      "log_linear": lambda: 1.0 - (1.0 - 1e-3) * t,
  }[name]()


def _reference_weight(name, t):
  """-alpha'(t) / (1 - alpha(t)) simplified by hand, in float64 numpy."""
  sigma = 1e-4**(1.0 - t) * 20.0**t
  return {
      "linear": lambda: 1.0 / t,
      "cosine": lambda: 0.5 * np.pi / np.tan(0.5 * np.pi * t),
      "polynomial_2": lambda: 2.0 / t,
      "polynomial_0.5": lambda: 0.5 / t,
      "geometric": lambda: sigma * np.log(20.0 / 1e-4) / np.expm1(sigma),
      "log_linear": lambda: 1.0 / t,
  }[name]()


# Round-off of alpha(t) and mask_prob(t) evaluated in float32. Every schedule rounds the
# input t and then does at most 2 transcendental functions and 8 basic operations, and
# a relative error d in any of these intermediates moves alpha by at most
# d * max(|alpha|, |alpha'(t)|): through the output directly, or through the argument,
# which is t, 1 - t (both <= 1), or log t for polynomial (moving alpha by
# d |log t| t |alpha'(t)|, and t |log t| <= 1/e), or geometric's exponent
# z = (1 - t) log sigma_min + t log sigma_max (its terms err by at most
# d |log sigma_min| each, and d alpha / dz = alpha'(t) / log(sigma_max / sigma_min),
# with |log sigma_min| < log(sigma_max / sigma_min)).
_ALPHA_ROUNDINGS = 2 * roundoff.TRANSCENDENTAL + 9
# The weight -alpha'(t) / mask_prob(t) likewise: at most 3 transcendental functions
# (geometric) and 12 basic operations, each moving log(weight) by at most
# d * (1 + |d log(weight) / dt|).
_WEIGHT_ROUNDINGS = 3 * roundoff.TRANSCENDENTAL + 12


def _alpha_bound(schedule, t):
  """|float32 alpha(t) - alpha(t)| <= gamma(_ALPHA_ROUNDINGS) (1 + |alpha'(t)|)
  (infinite at t = 0 for polynomial exponents < 1, where alpha'(0) is)."""
  with jax.enable_x64(True):
    dalpha = np.abs(np.asarray(schedule.dalpha(jnp.asarray(t, jnp.float64))))
  return roundoff.gamma(_ALPHA_ROUNDINGS) * (1.0 + dalpha)


# One grid shape throughout, so that eagerly dispatched ops compile once.
T_GRID = np.linspace(0.0, 1.0, 1001)
# Interior grid: the weight is infinite at t = 0 for every schedule.
T_INTERIOR = np.linspace(0.01, 0.99, 1001)


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_matches_defining_formula(name):
  alpha = SCHEDULES[name].alpha(jnp.asarray(T_GRID, jnp.float32))
  roundoff.assert_within(alpha, _reference_alpha(name, T_GRID),
                         _alpha_bound(SCHEDULES[name], T_GRID), name)


@pytest.mark.parametrize("name", SCHEDULES)
def test_endpoints(name):
  schedule = SCHEDULES[name]
  # geometric keeps exp(-1e-4) at t=0; log_linear keeps eps=1e-3 at t=1.
  assert float(schedule.alpha(0.0)) == pytest.approx(1.0, abs=2e-4)
  assert float(schedule.alpha(1.0)) == pytest.approx(0.0, abs=1.1e-3)


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_strictly_decreasing(name):
  alpha = np.asarray(SCHEDULES[name].alpha(jnp.asarray(T_GRID, jnp.float32)))
  assert np.all(np.diff(alpha) < 0)
  assert np.all((alpha >= 0) & (alpha <= 1))


@pytest.mark.parametrize("name", SCHEDULES)
def test_dalpha_matches_autodiff(name):
  schedule = SCHEDULES[name]
  # In float64: float32 log/exp carry ~1e-6 relative error, which autodiff
  # through alpha amplifies by 1 / (1 - alpha) near t = 0.
  with jax.enable_x64(True):
    t = jnp.asarray(T_INTERIOR, jnp.float64)
    dalpha = schedule.dalpha(t)
    autodiff = jax.vmap(jax.grad(schedule.alpha))(t)
    assert dalpha.dtype == jnp.float64
    np.testing.assert_allclose(dalpha, autodiff, rtol=1e-10)
    assert np.all(np.asarray(dalpha) < 0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_mask_prob_is_one_minus_alpha(name):
  schedule = SCHEDULES[name]
  t = jnp.asarray(T_GRID, jnp.float32)
  alpha, mask_prob = schedule.alpha(t), schedule.mask_prob(t)
  # Each within _alpha_bound of exact, and 1 - alpha (in float32) rounds once more.
  roundoff.assert_within(mask_prob, 1.0 - np.asarray(alpha),
                         2 * _alpha_bound(schedule, T_GRID) + roundoff.U, name)


@pytest.mark.parametrize("name", SCHEDULES)
def test_weight_is_minus_dalpha_over_one_minus_alpha(name):
  schedule = SCHEDULES[name]
  # In float64 so that 1 - alpha(t) (formed here by subtraction) is accurate.
  with jax.enable_x64(True):
    t = jnp.asarray(T_INTERIOR, jnp.float64)
    alpha, dalpha = schedule.alpha(t), schedule.dalpha(t)
    got = schedule.weight(t)
    expected = -dalpha / (1.0 - alpha)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_weight_matches_closed_form(name):
  schedule = SCHEDULES[name]
  got = schedule.weight(jnp.asarray(T_INTERIOR, jnp.float32))
  with jax.enable_x64(True):
    dlog_weight = np.abs(np.asarray(jax.vmap(jax.grad(
        lambda t: jnp.log(schedule.weight(t))))(jnp.asarray(T_INTERIOR, jnp.float64))))
  want = _reference_weight(name, T_INTERIOR)
  roundoff.assert_within(got, want, roundoff.gamma(_WEIGHT_ROUNDINGS)
                         * (1.0 + dlog_weight) * np.abs(want), name)


def test_linear_weight_is_one_over_t():
  t = jnp.asarray([1e-3, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(schedules.linear().weight(t), 1.0 / t, rtol=1e-7)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("linear", {}, schedules.linear()),
    ("cosine", {}, schedules.cosine()),
    ("polynomial", {"exponent": 3}, schedules.polynomial(3.0)),
    ("geometric", {"sigma_max": 10.0}, schedules.geometric(1e-4, 10.0)),
    ("log_linear", {"eps": 1e-2}, schedules.log_linear(1e-2)),
])
def test_get_schedule_builds_equal_schedules(name, kwargs, expected):
  schedule = schedules.get_schedule(name, **kwargs)
  assert schedule == expected
  assert hash(schedule) == hash(expected)
  assert schedule.name == name


def test_schedule_is_a_jit_static_argument():
  alpha_fn = jax.jit(lambda t, s: s.alpha(t), static_argnums=1)
  t = jnp.asarray([0.2, 0.7])
  for name in ("cosine", "geometric"):
    schedule = schedules.get_schedule(name)
    # Jitted and eager programs may fuse (and so round) differently: each is within
    # _alpha_bound of exact.
    roundoff.assert_within(alpha_fn(t, schedule), schedule.alpha(t),
                           2 * _alpha_bound(schedule, np.asarray(t, np.float64)), name)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="'sigmoid'.*linear, cosine, polynomial, "
                     "geometric, log_linear"):
    schedules.get_schedule("sigmoid")


@pytest.mark.parametrize("exponent", [0, -1.0, math.nan, math.inf, "2", True])
def test_polynomial_rejects_bad_exponent(exponent):
  with pytest.raises(ValueError, match="exponent"):
    schedules.polynomial(exponent)


@pytest.mark.parametrize("sigma_min,sigma_max", [
    (0.0, 20.0), (-1.0, 20.0), (1.0, 1.0), (30.0, 20.0), (1e-4, math.inf)])
def test_geometric_rejects_bad_sigmas(sigma_min, sigma_max):
  with pytest.raises(ValueError, match="sigma"):
    schedules.geometric(sigma_min, sigma_max)


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_log_linear_rejects_eps_outside_unit_interval(eps):
  with pytest.raises(ValueError, match="eps"):
    schedules.log_linear(eps)


def test_get_schedule_passes_parameters_through_validation():
  with pytest.raises(ValueError, match="exponent"):
    schedules.get_schedule("polynomial", exponent=-2.0)
