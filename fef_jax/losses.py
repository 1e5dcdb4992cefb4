"""The negative ELBO of masked diffusion: continuous time and T discrete steps.

Conventions.

* Continuous time. Times are drawn `t ~ U[eps, 1]` (`forward.sample_times`)
  and the ELBO integral runs over `[eps, 1]`, so the Monte Carlo estimate for
  one sequence is

      (1 - eps) * w(t) * sum_{i in M(xt)} -log p(x0^i | xt),
      w(t) = -alpha'(t) / (1 - alpha(t)),

  whose expectation over `t` and `xt ~ q(xt | x0)` is
  `int_eps^1 w(t) E_xt[sum_{i in M(xt)} -log p(x0^i | xt)] dt`. The part of
  the integral on `[0, eps]` and the prior term at `t = 1` (zero when
  `alpha(1) = 0`) are left out.
* Discrete time with `T` steps. Times are drawn uniformly from the grid
  `{1/T, 2/T, ..., 1}` (`sample_grid_times`) and the estimate is

      T * (alpha(t - 1/T) - alpha(t)) / (1 - alpha(t)) * sum_{i in M(xt)} ...,

  whose expectation is the sum over the `T` steps of the discrete-time
  negative ELBO's diffusion terms (the reconstruction term at `t = 0` and the
  prior term are left out; both vanish when `alpha(0) = 1` and
  `alpha(1) = 0`). As `T` grows the weight tends to `w(t)`; for the linear
  schedule it equals `w(t) = 1/t` for every `T`.
* Reporting. Both losses are returned per sequence in nats per token: the
  sum is divided by the number of maskable tokens of the row (`L` when
  `maskable_BxL` is None). Only masked positions that are also maskable
  contribute. A row without maskable tokens reports 0.
* The denoiser never predicts the mask: when `mask_id < V`, its logit is
  excluded from the softmax. Cross-entropies are computed in float32.
"""
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from fef_jax import forward
from fef_jax import schedules


def _check_mask_id(mask_id) -> None:
  if (isinstance(mask_id, bool) or not isinstance(mask_id, numbers.Integral)
      or mask_id < 0):
    raise ValueError(f"mask_id must be a non-negative Python int, got "
                     f"{mask_id!r}.")


def _check_num_steps(num_steps) -> None:
  if (isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral)
      or num_steps <= 0):
    raise ValueError(
        f"num_steps must be a positive Python int, got {num_steps!r}.")


def masked_cross_entropy(logits_BxLxV: jax.Array, x0_BxL: jax.Array,
                         xt_BxL: jax.Array, mask_id: int) -> jax.Array:
  """Per-position `-log p(x0 | xt)` at masked positions, 0 elsewhere.

  `p = softmax(logits)` over the vocabulary with the logit of `mask_id` set to
  -inf when `mask_id < V`. Computed in float32.

  Args:
    logits_BxLxV: denoiser logits.
    x0_BxL: clean tokens, ids in [0, V) and != mask_id; at a masked position
      an id >= V gives NaN and an id equal to mask_id gives inf.
    xt_BxL: noisy tokens; positions equal to `mask_id` are the masked ones.
    mask_id: the mask token id, a non-negative Python int (static under jit).

  Returns:
    ce_BxL, float32.

  Raises:
    ValueError: if `logits_BxLxV` is not 3-D, `x0_BxL` or `xt_BxL` is not
      shaped `logits_BxLxV.shape[:2]`, or `mask_id` is not a non-negative int.
  """
  _check_mask_id(mask_id)
  logits_BxLxV = jnp.asarray(logits_BxLxV, jnp.float32)
  x0_BxL, xt_BxL = jnp.asarray(x0_BxL), jnp.asarray(xt_BxL)
  if logits_BxLxV.ndim != 3:
    raise ValueError("logits_BxLxV must be 3-D (B, L, V), got shape "
                     f"{logits_BxLxV.shape}.")
  for name, tokens_BxL in (("x0_BxL", x0_BxL), ("xt_BxL", xt_BxL)):
    if tokens_BxL.shape != logits_BxLxV.shape[:2]:
      raise ValueError(
          f"{name} has shape {tokens_BxL.shape} but logits_BxLxV has shape "
          f"{logits_BxLxV.shape}; expected {name} shaped "
          f"{logits_BxLxV.shape[:2]}.")
  if mask_id < logits_BxLxV.shape[-1]:
    logits_BxLxV = logits_BxLxV.at[..., mask_id].set(-jnp.inf)
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
  logp_x0_BxL = jnp.take_along_axis(logp_BxLxV, x0_BxL[..., None], axis=-1)
  return jnp.where(xt_BxL == mask_id, -logp_x0_BxL[..., 0], 0.0)


def chunked_masked_cross_entropy(project_fn: Callable[[jax.Array], jax.Array],
                                 hidden_BxLxD: jax.Array, x0_BxL: jax.Array,
                                 xt_BxL: jax.Array, mask_id: int,
                                 chunk_length: int) -> jax.Array:
  """`masked_cross_entropy(project_fn(hidden_BxLxD), x0_BxL, xt_BxL, mask_id)`
  without the [B, L, V] logits: `chunk_length` positions at a time.

  The chunks run one after another (`lax.map`), each projected, log-softmaxed
  and scored under `jax.checkpoint`, so neither pass holds more than one chunk's
  `[B, chunk_length, V]` logits: the backward pass keeps the hidden states and
  recomputes each chunk's projection (one more forward projection, a third of
  its training FLOPs). Positions past the last full chunk are padded (and
  scored 0). Per position it is the same computation as the unchunked loss,
  so they agree up to the round-off of a differently tiled matmul.

  Args:
    project_fn: hidden states [B, C, D] -> float logits [B, C, V] (the model's
      output projection; may close over its parameters).
    hidden_BxLxD: the final hidden states, any float dtype.
    x0_BxL, xt_BxL, mask_id: as for `masked_cross_entropy`.
    chunk_length: positions per chunk, a positive int (static).

  Returns:
    ce_BxL, float32: `-log p(x0 | xt)` at masked positions, 0 elsewhere.

  Raises:
    ValueError: `chunk_length` not a positive int, `hidden_BxLxD` not 3-D,
      tokens not shaped `hidden_BxLxD.shape[:2]`, or what
      `masked_cross_entropy` raises.
  """
  _check_mask_id(mask_id)
  if (isinstance(chunk_length, bool) or not isinstance(chunk_length, numbers.Integral)
      or chunk_length <= 0):
    raise ValueError(f"chunk_length must be a positive int, got {chunk_length!r}.")
  if jnp.ndim(hidden_BxLxD) != 3:
    raise ValueError(f"hidden_BxLxD must be 3-D (B, L, D), got shape "
                     f"{jnp.shape(hidden_BxLxD)}.")
  batch, length = hidden_BxLxD.shape[:2]
  x0_BxL, xt_BxL = jnp.asarray(x0_BxL), jnp.asarray(xt_BxL)
  for name, tokens_BxL in (("x0_BxL", x0_BxL), ("xt_BxL", xt_BxL)):
    if tokens_BxL.shape != (batch, length):
      raise ValueError(f"{name} has shape {tokens_BxL.shape} but hidden_BxLxD has shape "
                       f"{hidden_BxLxD.shape}; expected {(batch, length)}.")
  chunks = -(-length // chunk_length)
  pad = chunks * chunk_length - length
  # Padded positions are unmasked (any id but mask_id), so they score 0.
  hidden_BxPxD = jnp.pad(hidden_BxLxD, ((0, 0), (0, pad), (0, 0)))
  x0_BxP = jnp.pad(x0_BxL, ((0, 0), (0, pad)))
  xt_BxP = jnp.pad(xt_BxL, ((0, 0), (0, pad)), constant_values=mask_id + 1)

  def by_chunk(x_BxP: jax.Array) -> jax.Array:
    """[B, P, ...] -> [chunks, B, chunk_length, ...], the axis `lax.map` runs over."""
    return jnp.moveaxis(x_BxP.reshape(batch, chunks, chunk_length, *x_BxP.shape[2:]), 1, 0)

  @jax.checkpoint
  def chunk_cross_entropy(inputs):
    hidden_BxCxD, x0_BxC, xt_BxC = inputs
    return masked_cross_entropy(project_fn(hidden_BxCxD), x0_BxC, xt_BxC, mask_id)

  ce_NxBxC = jax.lax.map(chunk_cross_entropy,
                         (by_chunk(hidden_BxPxD), by_chunk(x0_BxP), by_chunk(xt_BxP)))
  return jnp.moveaxis(ce_NxBxC, 0, 1).reshape(batch, chunks * chunk_length)[:, :length]


def _nll_per_token(logits_BxLxV, x0_BxL, xt_BxL, t_B, mask_id,
                   maskable_BxL) -> jax.Array:
  """`sum_{i masked and maskable} -log p(x0^i | xt) / n_b`, shape (B,).

  `n_b` is the number of maskable tokens of row `b` (L when `maskable_BxL` is
  None; at least 1). Validates `t_B` (shape (B,)) and `maskable_BxL` (bool,
  shaped like `x0_BxL`); `masked_cross_entropy` validates the rest.
  """
  maskable_BxL = forward.check_times_and_maskable(x0_BxL, t_B, maskable_BxL)
  ce_BxL = masked_cross_entropy(logits_BxLxV, x0_BxL, xt_BxL, mask_id)
  return _mean_over_maskable(ce_BxL, maskable_BxL)


def _mean_over_maskable(ce_BxL: jax.Array, maskable_BxL: jax.Array | None) -> jax.Array:
  """`sum_{i maskable} ce[b, i] / n_b` (see `_nll_per_token`), shape (B,)."""
  if maskable_BxL is None:
    return ce_BxL.sum(axis=-1) / ce_BxL.shape[1]
  nll_B = jnp.where(maskable_BxL, ce_BxL, 0.0).sum(axis=-1)
  return nll_B / jnp.maximum(maskable_BxL.sum(axis=-1), 1)


def _as_float32_or_wider(t_B: jax.Array) -> jax.Array:
  """`t_B` cast to float32 unless it is already float32 or wider."""
  return t_B.astype(jnp.promote_types(t_B.dtype, jnp.float32))


def continuous_elbo(logits_BxLxV: jax.Array, x0_BxL: jax.Array,
                    xt_BxL: jax.Array, t_B: jax.Array,
                    schedule: schedules.Schedule, mask_id: int, *,
                    eps: float = 1e-3,
                    maskable_BxL: jax.Array | None = None) -> jax.Array:
  """Continuous-time negative ELBO estimate, nats per token, one per row.

  `(1 - eps) * w(t_b) * sum_{i masked} -log p(x0^i | xt) / n_b` with `n_b`
  the number of maskable tokens of row `b` (see the module docstring). With
  `t_B` from `forward.sample_times(..., eps=eps)` and `xt_BxL` from
  `forward.q_sample`, its expectation is the ELBO integral over [eps, 1].

  Args:
    logits_BxLxV: denoiser logits for `xt_BxL`.
    x0_BxL: clean tokens.
    xt_BxL: noisy tokens at times `t_B`.
    t_B: diffusion times in [eps, 1].
    schedule: the masking schedule that produced `xt_BxL` (static under jit).
    mask_id: the mask token id (static under jit).
    eps: the lower end of the time range, in (0, 1); must match the `eps`
      the times were drawn with.
    maskable_BxL: optional bool array; False marks prompt and padding
      positions, which neither count nor contribute.

  Returns:
    nats_per_token_B, float32 (or wider if `t_B` is).

  Raises:
    ValueError: for mismatching shapes, a bad `mask_id`, or `eps` not in
      (0, 1).
  """
  forward.check_eps(eps)
  t_B = _as_float32_or_wider(jnp.asarray(t_B))
  nll_B = _nll_per_token(logits_BxLxV, x0_BxL, xt_BxL, t_B, mask_id,
                         maskable_BxL)
  return (1.0 - eps) * schedule.weight(t_B) * nll_B


def continuous_elbo_from_cross_entropy(ce_BxL: jax.Array, t_B: jax.Array,
                                       schedule: schedules.Schedule, *,
                                       eps: float = 1e-3,
                                       maskable_BxL: jax.Array | None = None
                                       ) -> jax.Array:
  """`continuous_elbo` from the per-position cross-entropies it sums.

  Equal to `continuous_elbo(logits, x0, xt, t_B, ...)` when
  `ce_BxL = masked_cross_entropy(logits, x0, xt, mask_id)` (or its chunked
  form, `chunked_masked_cross_entropy`): the same operations after that.

  Args:
    ce_BxL: float32 `-log p(x0 | xt)` at masked positions, 0 elsewhere.
    t_B, schedule, eps, maskable_BxL: as for `continuous_elbo`.

  Returns:
    nats_per_token_B, float32 (or wider if `t_B` is).

  Raises:
    ValueError: `ce_BxL` not 2-D, mismatching shapes, or `eps` not in (0, 1).
  """
  forward.check_eps(eps)
  t_B = _as_float32_or_wider(jnp.asarray(t_B))
  if jnp.ndim(ce_BxL) != 2:
    raise ValueError(f"ce_BxL must be 2-D (B, L), got shape {jnp.shape(ce_BxL)}.")
  maskable_BxL = forward.check_times_and_maskable(ce_BxL, t_B, maskable_BxL)
  nll_B = _mean_over_maskable(ce_BxL, maskable_BxL)
  return (1.0 - eps) * schedule.weight(t_B) * nll_B


def discrete_weight(t_B: jax.Array, schedule: schedules.Schedule,
                    num_steps: int) -> jax.Array:
  """T-step ELBO weight `T (alpha(t - 1/T) - alpha(t)) / (1 - alpha(t))`.

  `t - 1/T` is clipped at 0. Tends to `schedule.weight(t)` as `T` grows and
  equals it for the linear schedule. In float32 the difference of alphas
  loses about `log10(T)` digits; use float64 times for very large `T`.

  Args:
    t_B: times on the grid `{1/T, ..., 1}`, any shape.
    schedule: the masking schedule.
    num_steps: `T`, a positive Python int.

  Returns:
    Weights shaped like `t_B`.

  Raises:
    ValueError: if `num_steps` is not a positive int.
  """
  _check_num_steps(num_steps)
  t_B = jnp.asarray(t_B)
  s_B = jnp.maximum(t_B - 1.0 / num_steps, 0.0)
  return (num_steps * (schedule.alpha(s_B) - schedule.alpha(t_B))
          / schedule.mask_prob(t_B))


def sample_grid_times(key: jax.Array, batch_size: int, num_steps: int,
                      antithetic: bool = True) -> jax.Array:
  """Times `t_B` uniform on the grid `{1/T, 2/T, ..., 1}`, for `discrete_elbo`.

  `t_i = (k_i + 1) / T` with `k_i = floor(T u_i)` and `u_B` from
  `forward.low_discrepancy_uniform`: with `antithetic` the grid points are
  covered evenly (each exactly `B / T` times when `T` divides `B`, all
  distinct when `B <= T`); each `t_i` is marginally uniform on the grid.

  Args:
    key: PRNG key.
    batch_size: `B`, a positive Python int.
    num_steps: `T`, a positive Python int.
    antithetic: stratify the batch (True) or draw iid grid points (False).

  Returns:
    t_B in the default float dtype.

  Raises:
    ValueError: if `batch_size` or `num_steps` is not a positive int.
  """
  _check_num_steps(num_steps)
  u_B = forward.low_discrepancy_uniform(key, batch_size, antithetic=antithetic)
  k_B = jnp.minimum(jnp.floor(u_B * num_steps), num_steps - 1)
  return (k_B + 1.0) / num_steps


def discrete_elbo(logits_BxLxV: jax.Array, x0_BxL: jax.Array,
                  xt_BxL: jax.Array, t_B: jax.Array,
                  schedule: schedules.Schedule, mask_id: int, num_steps: int, *,
                  maskable_BxL: jax.Array | None = None) -> jax.Array:
  """T-step discrete-time negative ELBO estimate, nats per token, per row.

  `discrete_weight(t_b) * sum_{i masked} -log p(x0^i | xt) / n_b` (see the
  module docstring). With `t_B` from `sample_grid_times(..., num_steps)`
  (uniform on `{1/T, ..., 1}`) and `xt_BxL` from `forward.q_sample`, its
  expectation is the T-step negative ELBO's diffusion terms.

  Args:
    logits_BxLxV: denoiser logits for `xt_BxL`.
    x0_BxL: clean tokens.
    xt_BxL: noisy tokens at times `t_B`.
    t_B: times on the grid `{1/T, ..., 1}`.
    schedule: the masking schedule that produced `xt_BxL` (static under jit).
    mask_id: the mask token id (static under jit).
    num_steps: `T`, a positive Python int (static under jit).
    maskable_BxL: optional bool array; False marks prompt and padding
      positions, which neither count nor contribute.

  Returns:
    nats_per_token_B, float32 (or wider if `t_B` is).

  Raises:
    ValueError: for mismatching shapes, a bad `mask_id` or `num_steps`.
  """
  _check_num_steps(num_steps)
  t_B = _as_float32_or_wider(jnp.asarray(t_B))
  nll_B = _nll_per_token(logits_BxLxV, x0_BxL, xt_BxL, t_B, mask_id,
                         maskable_BxL)
  return discrete_weight(t_B, schedule, num_steps) * nll_B


def nats_to_bits(x: jax.Array) -> jax.Array:
  """`x / ln 2`: a loss in nats expressed in bits."""
  return x / math.log(2.0)


def perplexity_bound(nats_per_token: jax.Array) -> jax.Array:
  """`exp(nats_per_token)`: the perplexity upper bound a NELBO implies."""
  return jnp.exp(nats_per_token)
