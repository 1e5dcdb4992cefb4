"""The samplers' randomness: one draw of uniforms per row and use, shared by its consumers.

Every `jax.random` call (`split`, `fold_in`, `uniform`, `categorical`) hashes
counters, and on CPU JAX's threefry hash was a rolled loop of five rounds, which
inside a sampler's `lax.while_loop` cost as much as a small model's layer at
batch 1. So a step or round draws all the uniforms it needs in one call
(`uniforms`) and derives categorical draws from them by the Gumbel-max trick
(`categorical`), instead of one call per use; the samplers' threefry keys also
hash without that loop (`fef_jax.unrolled_threefry`). The draws are the same
distributions as `jax.random`'s.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp


def uniforms(keys_B: jax.Array, sizes: Sequence[int]) -> list[jax.Array]:
  """Independent uniforms in `[tiny, 1)` per row, in pieces: one threefry call.

  Args:
    keys_B: one PRNG key per row.
    sizes: static piece sizes.

  Returns:
    float32 arrays `[B, size]`, one per entry of `sizes`: row `b` reads only
    `keys_B[b]`, so rows stay independent. The lower bound `tiny` (the smallest
    normal float32) keeps `log(u)` and `log(-log(u))` finite.
  """
  tiny = jnp.finfo(jnp.float32).tiny
  u_BxN = jax.vmap(lambda k: jax.random.uniform(k, (sum(sizes),), jnp.float32,
                                                minval=tiny, maxval=1.0))(keys_B)
  return jnp.split(u_BxN, list(itertools.accumulate(sizes[:-1])), axis=1)


def categorical(log_probs_xV: jax.Array, uniform_xV: jax.Array) -> jax.Array:
  """int32 draws from `softmax(log_probs)` along the last axis, by the Gumbel-max trick.

  `uniform_xV` (same shape) holds independent uniforms in `(0, 1)`; `-log(-log(u))` is
  a standard Gumbel, as `jax.random.gumbel` draws it. Entries of `-inf` are never drawn.
  """
  return jnp.argmax(log_probs_xV - jnp.log(-jnp.log(uniform_xV)), axis=-1).astype(jnp.int32)
