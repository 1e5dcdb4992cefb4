"""The samplers' randomness: one draw of uniforms per row and use, shared by its consumers.

Every `jax.random` call (`split`, `fold_in`, `uniform`, `categorical`) hashes
counters, and on CPU JAX's threefry hash was a rolled loop of five rounds, which
inside a sampler's `lax.while_loop` cost as much as a small model's layer at
batch 1. So a step or round draws all the uniforms it needs in one call
(`uniforms`); the samplers' threefry keys also hash without that loop
(`fef_jax.unrolled_threefry`).

A categorical draw over `V` tokens reads `UNIFORMS_PER_DRAW` uniforms, not `V`
(`categorical`, by inverse CDF): the Gumbel-max trick needs `V` uniforms and two
logarithms per token, which at a real vocabulary (`V = 32,000`) cost a FeF round
more than the model's block call it verifies, on CPU.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

# One uniform picks a block of the vocabulary, one a token inside it.
UNIFORMS_PER_DRAW = 2


def uniforms(keys_B: jax.Array, sizes: Sequence[int]) -> list[jax.Array]:
  """Independent uniforms in `[tiny, 1)` per row, in pieces: one threefry call.

  Args:
    keys_B: one PRNG key per row.
    sizes: static piece sizes.

  Returns:
    float32 arrays `[B, size]`, one per entry of `sizes`: row `b` reads only
    `keys_B[b]`, so rows stay independent. The lower bound `tiny` (the smallest
    normal float32) keeps `log(u)` finite.
  """
  tiny = jnp.finfo(jnp.float32).tiny
  u_BxN = jax.vmap(lambda k: jax.random.uniform(k, (sum(sizes),), jnp.float32,
                                                minval=tiny, maxval=1.0))(keys_B)
  return jnp.split(u_BxN, list(itertools.accumulate(sizes[:-1])), axis=1)


def categorical(log_probs_xV: jax.Array, uniform_xU: jax.Array) -> jax.Array:
  """int32 draws from `softmax(log_probs)` along the last axis (see `weighted_draw`).

  `log_probs_xV` need not be normalized; entries of `-inf` are never drawn.
  `uniform_xU` holds `UNIFORMS_PER_DRAW` independent uniforms in `(0, 1)` per draw.
  A row of NaN, or of `-inf` only, draws an id in range (callers report such rows).
  """
  log_probs_xV = log_probs_xV.astype(jnp.float32)
  max_x1 = jnp.max(log_probs_xV, axis=-1, keepdims=True)
  return weighted_draw(jnp.exp(log_probs_xV - max_x1), uniform_xU)


def _block_size(vocab_size: int) -> int:
  """Tokens per block: about `sqrt(V)`, so that both levels scan about `sqrt(V)` sums."""
  return max(1, math.isqrt(vocab_size - 1) + 1)


def _inverse_cdf(weights_xN: jax.Array, uniform_x: jax.Array) -> jax.Array:
  """int32 `[...]`: an index drawn with probability proportional to `weights` by one
  uniform (`_first_above` of the running sums)."""
  return _first_above(weights_xN, jnp.cumsum(weights_xN, axis=-1), uniform_x)


def _first_above(weights_xN: jax.Array, cumulative_xN: jax.Array,
                 uniform_x: jax.Array) -> jax.Array:
  """int32 `[...]`: the first index of positive weight whose running sum exceeds `u`
  times the largest such sum, or 0 where no weight is positive.

  Only indices of positive weight are candidates: XLA may compute a cumulative sum as
  a tree of partial sums (TPU's associative scan, the blocked scan it builds for long
  axes on CPU), so the running sum can change by round-off at an index of zero weight
  and be the first to exceed the threshold. The threshold stays below the largest sum
  (in float32, `u * s < s` for every `u < 1` and normal `s`), so some candidate is
  always found.
  """
  positive_xN = weights_xN > 0
  total_x = jnp.max(jnp.where(positive_xN, cumulative_xN, 0.0), axis=-1)
  found_xN = positive_xN & (cumulative_xN > (uniform_x * total_x)[..., None])
  return jnp.argmax(found_xN, axis=-1).astype(jnp.int32)


def weighted_draw(weights_xV: jax.Array, uniform_xU: jax.Array) -> jax.Array:
  """int32 draws of index `v` with probability `weights[v] / sum(weights)` along the last axis.

  By inverse CDF in two levels: the first uniform picks a block of about `sqrt(V)`
  tokens by the blocks' total weights, the second a token of that block by its
  weights. That is `O(V)` work and two uniforms per draw (a flat cumulative sum over
  `V` would cost XLA's CPU scan several times more); the probabilities are exact up to
  float32 resolution: the uniforms are multiples of `2^-23`, so a token's probability is
  off by at most `2^-23` times (its share of its block + its block's share of the
  total), plus the sums' round-off.

  Args:
    weights_xV: nonnegative float weights, at least one positive per draw.
    uniform_xU: float32 `[..., UNIFORMS_PER_DRAW]`, independent uniforms in `(0, 1)`.

  Returns:
    int32 `[...]` ids in `[0, V)`, never one of zero weight. A draw whose weights hold
    NaN or no positive entry returns an id in range that means nothing.

  Raises:
    ValueError: if `uniform_xU` is not `weights_xV`'s leading shape plus
      `(UNIFORMS_PER_DRAW,)`.
  """
  if uniform_xU.shape != weights_xV.shape[:-1] + (UNIFORMS_PER_DRAW,):
    raise ValueError(f"weighted_draw: uniforms of shape {uniform_xU.shape} for weights of "
                     f"shape {weights_xV.shape}; expected "
                     f"{weights_xV.shape[:-1] + (UNIFORMS_PER_DRAW,)}")
  vocab_size = weights_xV.shape[-1]
  block = _block_size(vocab_size)
  num_blocks = -(-vocab_size // block)
  padding = [(0, 0)] * (weights_xV.ndim - 1) + [(0, num_blocks * block - vocab_size)]
  weights_xCxK = jnp.pad(weights_xV.astype(jnp.float32), padding).reshape(
      weights_xV.shape[:-1] + (num_blocks, block))
  # A block of positive sum holds a token of positive weight, and the padding has none.
  block_x = _inverse_cdf(jnp.sum(weights_xCxK, axis=-1), uniform_xU[..., 0])
  in_block_xK = jnp.take_along_axis(weights_xCxK, block_x[..., None, None], axis=-2)[..., 0, :]
  return block_x * block + _inverse_cdf(in_block_xK, uniform_xU[..., 1])
