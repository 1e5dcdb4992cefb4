"""Tests for fef_jax.schedules: values, derivatives, weights, validation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax import schedules

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


# One grid shape throughout, so that eagerly dispatched ops compile once.
T_GRID = np.linspace(0.0, 1.0, 1001)
# Interior grid: the weight is infinite at t = 0 for every schedule.
T_INTERIOR = np.linspace(0.01, 0.99, 1001)


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_matches_defining_formula(name):
  alpha = SCHEDULES[name].alpha(jnp.asarray(T_GRID, jnp.float32))
  # float32 evaluation of values in [0, 1]: a few ulps of 1.
  np.testing.assert_allclose(alpha, _reference_alpha(name, T_GRID), rtol=0,
                             atol=1e-6)


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
  # Both sides are float32 values in [0, 1], each a few ulps of 1 off.
  np.testing.assert_allclose(mask_prob, 1.0 - alpha, rtol=0,
                             atol=4 * np.finfo(np.float32).eps)


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
  got = SCHEDULES[name].weight(jnp.asarray(T_INTERIOR, jnp.float32))
  np.testing.assert_allclose(got, _reference_weight(name, T_INTERIOR),
                             rtol=2e-5)


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
    np.testing.assert_array_equal(alpha_fn(t, schedule), schedule.alpha(t))


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
