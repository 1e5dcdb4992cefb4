"""Threefry keys whose hash is unrolled: the same random bits, without XLA:CPU's rolled loop.

JAX lowers the Threefry-2x32 hash on CPU as a `while` loop of five iterations (it
compiles faster than the 20 rounds written out). Inside a sampler's `while` loops
each `jax.random` call is then a nested loop with its own XLA:CPU executor, and on
a 2-core Xeon at batch 1 those nested loops moved the sampler's work between the two
cores several times per answer: cached FeF (`W=2`, the comparison's model) took
1.58-1.72 ms per answer on two cores against 1.30-1.35 ms pinned to one, with ~9.6
voluntary context switches per answer; with the hash unrolled, 1.11-1.16 ms and ~3.6
(BENCHMARKS.md, "Where the time goes").

`as_unrolled(key)` re-wraps a threefry key as a key of `IMPL`, whose `split`,
`fold_in` and `random_bits` compute the hash with its rounds written out and lay
out counters as JAX's threefry does with `jax_threefry_partitionable` (the default):
every `jax.random` function returns the same values for either key
(`tests/test_unrolled_threefry.py` checks it). The hash is Threefry-2x32 with 20
rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
"""
from __future__ import annotations

import math

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def hash_2x32(key1: jax.Array, key2: jax.Array, count1: jax.Array,
              count2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 of the counter pairs `(count1, count2)` under key `(key1, key2)`.

  All uint32; the keys broadcast against the counts. Five groups of four rounds,
  each group followed by a key injection, written out (no loop).
  """
  schedule = (key1, key2, key1 ^ key2 ^ _KEY_PARITY)
  x1, x2 = count1 + schedule[0], count2 + schedule[1]
  for group in range(5):
    for bits in _ROTATIONS[group % 2]:
      x1 = x1 + x2
      x2 = _rotate_left(x2, bits) ^ x1
    x1 = x1 + schedule[(group + 1) % 3]
    x2 = x2 + schedule[(group + 2) % 3] + np.uint32(group + 1)
  return x1, x2


def _hashed_iota(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """The hash of a row-major uint64 iota of `shape`, given as (high, low) uint32 words."""
  size = math.prod(shape)
  if size >= 2 ** 32:
    raise NotImplementedError(f"random bits of {size} >= 2**32 entries")
  low = jax.lax.iota(jnp.uint32, size).reshape(shape)
  return hash_2x32(key[0], key[1], jnp.zeros_like(low), low)


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jnp.stack(_hashed_iota(key, shape), axis=-1)


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
  # JAX seeds the counter pair from `data` as a uint32: high word 0, low word data.
  bits1, bits2 = hash_2x32(key[0], key[1], jnp.zeros((1,), jnp.uint32),
                           jnp.asarray(data, jnp.uint32).reshape(1))
  return jnp.concatenate([bits1, bits2])


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  bits1, bits2 = _hashed_iota(key, shape)
  if bit_width == 64:
    return (bits1.astype(jnp.uint64) << np.uint64(32)) | bits2.astype(jnp.uint64)
  return (bits1 ^ bits2).astype({8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width])


IMPL = jax.extend.random.define_prng_impl(
    key_shape=(2,), seed=jax.extend.random.threefry_prng_impl.seed, split=_split,
    random_bits=_random_bits, fold_in=_fold_in, name="threefry2x32_unrolled", tag="fu")


def as_unrolled(key: jax.Array) -> jax.Array:
  """`key` as a key of `IMPL` if it is a threefry key, else unchanged.

  A threefry key is a typed key of impl `threefry2x32`, or a raw uint32 key
  (last axis 2) while threefry is JAX's default impl. The result draws the same
  values from every `jax.random` function as `key` does. With
  `jax_threefry_partitionable` off, JAX lays out threefry's counters otherwise, and
  the key is returned unchanged.
  """
  if not jax.config.jax_threefry_partitionable:
    return key
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if str(jax.random.key_impl(key)) != "threefry2x32":
      return key
    data = jax.random.key_data(key)
  elif (key.dtype == jnp.uint32 and key.shape[-1:] == (2,)
        and jax.config.jax_default_prng_impl == "threefry2x32"):
    data = key
  else:
    return key
  return jax.random.wrap_key_data(data, impl=IMPL)
