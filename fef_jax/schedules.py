"""Masking schedules of the absorbing-state forward process.

A schedule is the probability `alpha(t)` that a token is still unmasked at time
`t in [0, 1]`; it falls from ~1 at `t = 0` to ~0 at `t = 1`. Each schedule gives
`alpha`, its closed-form derivative `dalpha = d alpha / dt`, the mask
probability `mask_prob = 1 - alpha` in a form that stays accurate where
`alpha` is close to 1, and the continuous-time ELBO weight
`weight = -dalpha / (1 - alpha)`.

| name         | alpha(t)                            | weight(t)          |
|--------------|-------------------------------------|--------------------|
| `linear`     | `1 - t`                             | `1 / t`            |
| `cosine`     | `1 - cos(pi/2 (1 - t))`             | `pi/2 cot(pi/2 t)` |
| `polynomial` | `1 - t^w`                           | `w / t`            |
| `geometric`  | `exp(-sigma_min^(1-t) sigma_max^t)` | see `geometric`    |
| `log_linear` | `1 - (1 - eps) t` (MDLM)            | `1 / t`            |

All functions of `t` accept Python floats or arrays of any shape, act
elementwise, keep a floating input's dtype, and are jit- and grad-compatible.
Schedules are configured with Python numbers; a `Schedule` is hashable and
compares by value, so it can be a static argument of `jax.jit`.
"""
import dataclasses
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

# f(t, *params) -> array, elementwise in t.
ScheduleFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A masking schedule: `alpha(t)`, its derivative and the ELBO weight.

  Attributes:
    name: the schedule's name, as accepted by `get_schedule`.
    params: the schedule's numeric parameters, passed after `t` to the
      functions below.
    alpha_fn: `alpha_fn(t, *params)`, the probability a token is unmasked.
    dalpha_fn: `dalpha_fn(t, *params)`, the closed-form `d alpha / dt`.
    mask_prob_fn: `mask_prob_fn(t, *params) = 1 - alpha(t)`, computed without
      cancellation where `alpha` is close to 1.
  """
  name: str
  params: tuple[float, ...]
  alpha_fn: ScheduleFn
  dalpha_fn: ScheduleFn
  mask_prob_fn: ScheduleFn

  def alpha(self, t) -> jax.Array:
    """Probability that a token is unmasked at time `t`; same shape as `t`."""
    return self.alpha_fn(_as_float(t), *self.params)

  def dalpha(self, t) -> jax.Array:
    """`d alpha / dt` at `t` (closed form, <= 0); same shape as `t`."""
    return self.dalpha_fn(_as_float(t), *self.params)

  def mask_prob(self, t) -> jax.Array:
    """Probability `1 - alpha(t)` that a token is masked; same shape as `t`."""
    return self.mask_prob_fn(_as_float(t), *self.params)

  def weight(self, t) -> jax.Array:
    """ELBO weight `-alpha'(t) / (1 - alpha(t))`; same shape as `t`.

    Infinite (or NaN) where `alpha(t) = 1`, e.g. at `t = 0` for `linear`.
    """
    return -self.dalpha(t) / self.mask_prob(t)


def _as_float(t) -> jax.Array:
  """`t` as a JAX array, cast to the default float dtype unless floating."""
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.floating):
    return t
  return t.astype(jnp.result_type(float))


def _check_real(name: str, value) -> float:
  """Returns `value` as a float; ValueError unless a finite real number."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value)):
    raise ValueError(f"{name} must be a finite real number, got {value!r}.")
  return float(value)


def _check_positive(name: str, value) -> float:
  """Returns `value` as a float; ValueError unless finite and > 0."""
  value = _check_real(name, value)
  if value <= 0:
    raise ValueError(f"{name} must be > 0, got {value!r}.")
  return value


# linear: alpha = 1 - t.
def _linear_alpha(t):
  return 1.0 - t


def _linear_dalpha(t):
  return jnp.full_like(t, -1.0)


def _linear_mask_prob(t):
  return t


def linear() -> Schedule:
  """`alpha(t) = 1 - t`; `weight(t) = 1 / t`."""
  return Schedule("linear", (), _linear_alpha, _linear_dalpha,
                  _linear_mask_prob)


# cosine: alpha = 1 - cos(pi/2 (1 - t)) = 2 sin^2(pi/4 (1 - t)),
# 1 - alpha = sin(pi/2 t).
def _cosine_alpha(t):
  return 2.0 * jnp.sin(0.25 * math.pi * (1.0 - t))**2


def _cosine_dalpha(t):
  return -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))


def _cosine_mask_prob(t):
  return jnp.sin(0.5 * math.pi * t)


def cosine() -> Schedule:
  """`alpha(t) = 1 - cos(pi/2 (1 - t))`; `weight(t) = pi/2 cot(pi/2 t)`."""
  return Schedule("cosine", (), _cosine_alpha, _cosine_dalpha,
                  _cosine_mask_prob)


# polynomial: alpha = 1 - t^w = -expm1(w log t).
def _polynomial_alpha(t, exponent):
  return -jnp.expm1(exponent * jnp.log(t))


def _polynomial_dalpha(t, exponent):
  return -exponent * t**(exponent - 1.0)


def _polynomial_mask_prob(t, exponent):
  return t**exponent


def polynomial(exponent: float) -> Schedule:
  """`alpha(t) = 1 - t^exponent`; `weight(t) = exponent / t`.

  Args:
    exponent: `w > 0`; `w = 1` is the linear schedule.

  Raises:
    ValueError: if `exponent` is not a finite number > 0.
  """
  exponent = _check_positive("polynomial exponent", exponent)
  return Schedule("polynomial", (exponent,), _polynomial_alpha,
                  _polynomial_dalpha, _polynomial_mask_prob)


# geometric: sigma = sigma_min^(1-t) sigma_max^t, alpha = exp(-sigma),
# 1 - alpha = -expm1(-sigma), dalpha = -alpha sigma log(sigma_max / sigma_min).
def _geometric_sigma(t, sigma_min, sigma_max):
  return jnp.exp((1.0 - t) * math.log(sigma_min) + t * math.log(sigma_max))


def _geometric_alpha(t, sigma_min, sigma_max):
  return jnp.exp(-_geometric_sigma(t, sigma_min, sigma_max))


def _geometric_dalpha(t, sigma_min, sigma_max):
  sigma = _geometric_sigma(t, sigma_min, sigma_max)
  return -jnp.exp(-sigma) * sigma * math.log(sigma_max / sigma_min)


def _geometric_mask_prob(t, sigma_min, sigma_max):
  return -jnp.expm1(-_geometric_sigma(t, sigma_min, sigma_max))


def geometric(sigma_min: float = 1e-4, sigma_max: float = 20.0) -> Schedule:
  """`alpha(t) = exp(-sigma(t))` with `sigma(t) = sigma_min^(1-t) sigma_max^t`.

  `alpha(0) = exp(-sigma_min)` and `alpha(1) = exp(-sigma_max)`;
  `weight(t) = sigma(t) log(sigma_max / sigma_min) / expm1(sigma(t))`.

  Args:
    sigma_min: total noise rate at `t = 0`, > 0.
    sigma_max: total noise rate at `t = 1`, > sigma_min.

  Raises:
    ValueError: unless `0 < sigma_min < sigma_max` (both finite).
  """
  sigma_min = _check_positive("geometric sigma_min", sigma_min)
  sigma_max = _check_positive("geometric sigma_max", sigma_max)
  if sigma_min >= sigma_max:
    raise ValueError("geometric schedule needs sigma_min < sigma_max, got "
                     f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}.")
  return Schedule("geometric", (sigma_min, sigma_max), _geometric_alpha,
                  _geometric_dalpha, _geometric_mask_prob)


# log-linear (MDLM): alpha = 1 - (1 - eps) t, i.e. sigma = -log1p(-(1-eps) t).
def _log_linear_alpha(t, eps):
  return 1.0 - (1.0 - eps) * t


def _log_linear_dalpha(t, eps):
  return jnp.full_like(t, -(1.0 - eps))


def _log_linear_mask_prob(t, eps):
  return (1.0 - eps) * t


def log_linear(eps: float = 1e-3) -> Schedule:
  """MDLM's `alpha(t) = 1 - (1 - eps) t`; `alpha(1) = eps`, `weight = 1 / t`.

  Args:
    eps: the unmasked probability left at `t = 1`, in (0, 1).

  Raises:
    ValueError: if `eps` is not in (0, 1).
  """
  eps = _check_real("log_linear eps", eps)
  if not 0.0 < eps < 1.0:
    raise ValueError(f"log_linear eps must be in (0, 1), got {eps!r}.")
  return Schedule("log_linear", (eps,), _log_linear_alpha, _log_linear_dalpha,
                  _log_linear_mask_prob)


_FACTORIES: dict[str, Callable[..., Schedule]] = {
    "linear": linear,
    "cosine": cosine,
    "polynomial": polynomial,
    "geometric": geometric,
    "log_linear": log_linear,
}


def get_schedule(name: str, **kwargs) -> Schedule:
  """The schedule called `name`, built with the keyword arguments `kwargs`.

  Args:
    name: one of "linear", "cosine", "polynomial", "geometric", "log_linear".
    **kwargs: the parameters of that schedule's factory (`exponent` for
      "polynomial", `sigma_min`/`sigma_max` for "geometric", `eps` for
      "log_linear").

  Raises:
    ValueError: for an unknown name or an invalid parameter value.
    TypeError: for a keyword argument the schedule does not take, or a missing
      required one.
  """
  if name not in _FACTORIES:
    raise ValueError(f"Unknown schedule {name!r}; valid names are "
                     f"{', '.join(_FACTORIES)}.")
  return _FACTORIES[name](**kwargs)
