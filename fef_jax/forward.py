"""The masked (absorbing-state) forward process and diffusion-time sampling.

`q_sample` draws `xt ~ q(xt | x0)`: every token is kept independently with
probability `alpha(t)` and otherwise replaced by `mask_id`. `sample_times`
draws the training times `t ~ U[eps, 1]`, by default with one shared uniform
spread over `B` strata (antithetic / low-discrepancy sampling), which lowers
the variance of the batch-mean loss without changing its expectation.
"""
import numbers

import jax
import jax.numpy as jnp

from fef_jax import schedules


def _check_batch_size(batch_size) -> None:
  if (isinstance(batch_size, bool)
      or not isinstance(batch_size, numbers.Integral) or batch_size <= 0):
    raise ValueError(
        f"batch_size must be a positive Python int, got {batch_size!r}.")


def check_eps(eps) -> None:
  """ValueError unless `eps` is a real number in (0, 1)."""
  if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
      or not 0.0 < eps < 1.0):
    raise ValueError(f"eps must be a number in (0, 1), got {eps!r}.")


def check_times_and_maskable(x0_BxL: jax.Array, t_B: jax.Array,
                             maskable_BxL: jax.Array | None) -> jax.Array | None:
  """Checks one time per row and a bool `maskable` shaped like `x0`; returns it as an array.

  Raises:
    ValueError: `t_B` not of shape (B,), or `maskable_BxL` not bool[B, L].
  """
  if t_B.shape != x0_BxL.shape[:1]:
    raise ValueError(f"t_B has shape {t_B.shape}, expected "
                     f"{x0_BxL.shape[:1]} (one time per row of x0_BxL with "
                     f"shape {x0_BxL.shape}).")
  if maskable_BxL is None:
    return None
  maskable_BxL = jnp.asarray(maskable_BxL)
  if maskable_BxL.shape != x0_BxL.shape or maskable_BxL.dtype != jnp.bool_:
    raise ValueError("maskable_BxL must be a bool array shaped like x0_BxL "
                     f"{x0_BxL.shape}, got shape {maskable_BxL.shape} and "
                     f"dtype {maskable_BxL.dtype}.")
  return maskable_BxL


def low_discrepancy_uniform(key: jax.Array, batch_size: int, *,
                            antithetic: bool = True) -> jax.Array:
  """`batch_size` draws from U[0, 1), stratified when `antithetic`.

  With `antithetic`, `u_i = (u + i / B) mod 1` for one `u ~ U[0, 1)`: each
  `u_i` is marginally U[0, 1) and exactly one falls in each stratum
  `[k / B, (k + 1) / B)`. Otherwise the draws are iid.

  Args:
    key: PRNG key.
    batch_size: `B`, a positive Python int (static under jit).
    antithetic: whether to stratify.

  Returns:
    u_B, default float dtype, values in [0, 1).

  Raises:
    ValueError: if `batch_size` is not a positive int.
  """
  _check_batch_size(batch_size)
  if not antithetic:
    return jax.random.uniform(key, (batch_size,))
  u = jax.random.uniform(key, ())
  return jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)


def sample_times(key: jax.Array, batch_size: int, *, eps: float = 1e-3,
                 antithetic: bool = True) -> jax.Array:
  """Diffusion times `t_B ~ U[eps, 1]`: `t_i = eps + (1 - eps) u_i`.

  `u_B` comes from `low_discrepancy_uniform`, so with `antithetic` exactly one
  time falls in each stratum of width `(1 - eps) / B`.

  Args:
    key: PRNG key.
    batch_size: `B`, a positive Python int (static under jit).
    eps: smallest time, in (0, 1); keeps the ELBO weight (`1/t` for the
      linear schedule) finite.
    antithetic: stratify the batch (True) or draw iid times (False).

  Returns:
    t_B, default float dtype, values in [eps, 1].

  Raises:
    ValueError: if `batch_size` is not a positive int or `eps` not in (0, 1).
  """
  check_eps(eps)
  u_B = low_discrepancy_uniform(key, batch_size, antithetic=antithetic)
  return eps + (1.0 - eps) * u_B


def q_sample(key: jax.Array, x0_BxL: jax.Array, t_B: jax.Array,
             schedule: schedules.Schedule, mask_id: int,
             maskable_BxL: jax.Array | None = None) -> jax.Array:
  """Samples `xt ~ q(xt | x0)` at per-row times `t_B`.

  Each token of row `b` is replaced by `mask_id` independently with
  probability `1 - alpha(t_b)` and kept otherwise; positions where
  `maskable_BxL` is False (prompts, padding) are always kept.

  Args:
    key: PRNG key.
    x0_BxL: clean tokens, integer dtype.
    t_B: diffusion times in [0, 1], one per row.
    schedule: the masking schedule (static under jit).
    mask_id: the mask token id, a non-negative Python int that fits the dtype
      of `x0_BxL` (static under jit).
    maskable_BxL: optional bool array; False marks positions never masked.

  Returns:
    xt_BxL, same shape and dtype as `x0_BxL`.

  Raises:
    ValueError: if `x0_BxL` is not a 2-D integer array, `t_B` is not of shape
      (B,), `mask_id` is not a valid id for `x0_BxL`'s dtype, or
      `maskable_BxL` is not a bool array shaped like `x0_BxL`.
  """
  x0_BxL = jnp.asarray(x0_BxL)
  t_B = jnp.asarray(t_B)
  if x0_BxL.ndim != 2 or not jnp.issubdtype(x0_BxL.dtype, jnp.integer):
    raise ValueError("x0_BxL must be a 2-D integer array, got shape "
                     f"{x0_BxL.shape} and dtype {x0_BxL.dtype}.")
  if (isinstance(mask_id, bool) or not isinstance(mask_id, numbers.Integral)
      or not 0 <= mask_id <= jnp.iinfo(x0_BxL.dtype).max):
    raise ValueError(f"mask_id must be a Python int in [0, "
                     f"{jnp.iinfo(x0_BxL.dtype).max}] (the range of "
                     f"{x0_BxL.dtype}), got {mask_id!r}.")
  maskable_BxL = check_times_and_maskable(x0_BxL, t_B, maskable_BxL)
  masked_BxL = jax.random.bernoulli(key, schedule.mask_prob(t_B)[:, None],
                                    x0_BxL.shape)
  if maskable_BxL is not None:
    masked_BxL &= maskable_BxL
  return jnp.where(masked_BxL, jnp.asarray(mask_id, x0_BxL.dtype), x0_BxL)
