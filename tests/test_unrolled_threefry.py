"""Threefry keys with the hash unrolled draw exactly what JAX's threefry keys draw."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import unrolled_threefry
from fef_jax.bench import loop_ops
from tests.helpers import tiny_block_causal_denoiser


def _data(key):
  return np.asarray(jax.random.key_data(key))


def _draws(key):
  """Every kind of draw the samplers and their tests make, from one key."""
  keys = jax.random.split(key, 3)
  return {
      "split": _data(keys),
      "split_2d": _data(jax.random.split(key, (2, 3))),
      "fold_in": [_data(jax.random.fold_in(key, i)) for i in (0, 1, 7, 2 ** 31 - 1)],
      "fold_in_negative": _data(jax.random.fold_in(key, jnp.int32(-3))),
      "fold_in_batched": _data(jax.jit(jax.vmap(jax.random.fold_in))(keys, jnp.arange(3))),
      "bits": [np.asarray(jax.random.bits(key, (3, 5), dtype))
               for dtype in (jnp.uint8, jnp.uint16, jnp.uint32)],
      "bits_scalar": np.asarray(jax.random.bits(key, (), jnp.uint32)),
      "uniform": np.asarray(jax.random.uniform(key, (65,))),
      "uniform_batched": np.asarray(jax.jit(jax.vmap(
          lambda k: jax.random.uniform(k, (2, 4))))(keys)),
      "normal": np.asarray(jax.random.normal(key, (7,))),
      "categorical": np.asarray(jax.random.categorical(key, jnp.zeros((4, 9)))),
      "randint": np.asarray(jax.random.randint(key, (6,), 0, 1000)),
      "permutation": np.asarray(jax.random.permutation(key, 10)),
  }


@pytest.mark.parametrize("seed", [0, 1, 12345, 2 ** 31 - 1])
def test_every_draw_equals_jax_threefry_bit_for_bit(seed):
  key = jax.random.key(seed)
  unrolled = unrolled_threefry.as_unrolled(key)
  assert str(jax.random.key_impl(unrolled)) != str(jax.random.key_impl(key))
  jax.tree.map(np.testing.assert_array_equal, _draws(unrolled), _draws(key))


def test_64_bit_draws_equal_jax_threefry_with_x64_enabled():
  with jax.enable_x64(True):
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        jax.random.bits(unrolled_threefry.as_unrolled(key), (2, 5), jnp.uint64),
        jax.random.bits(key, (2, 5), jnp.uint64))


def test_the_hash_matches_the_threefry_paper_test_vectors():
  # Random123's known-answer vectors for Threefry-2x32 with 20 rounds.
  cases = [((0x0, 0x0), (0x0, 0x0), (0x6b200159, 0x99ba4efe)),
           ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
           ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0))]
  for (key1, key2), (count1, count2), want in cases:
    got = unrolled_threefry.hash_2x32(*(jnp.uint32(v) for v in (key1, key2, count1, count2)))
    assert tuple(int(v) for v in got) == want


def test_raw_threefry_keys_are_rewrapped_and_other_keys_left_alone():
  raw = jax.random.PRNGKey(3)
  unrolled = unrolled_threefry.as_unrolled(raw)
  assert jax.dtypes.issubdtype(unrolled.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.uniform(unrolled, (4,)), jax.random.uniform(raw, (4,)))
  rbg = jax.random.key(0, impl="rbg")
  assert unrolled_threefry.as_unrolled(rbg) is rbg
  not_a_key = jnp.zeros((3,), jnp.uint32)
  assert unrolled_threefry.as_unrolled(not_a_key) is not_a_key


def test_keys_stay_jax_threefry_where_its_counters_are_laid_out_otherwise():
  key = jax.random.key(5)
  with jax.threefry_partitionable(False):
    assert unrolled_threefry.as_unrolled(key) is key


@pytest.fixture(scope="module")
def block_causal():
  tokens = np.array([[1, 2, 3, 4, 6, 6, 6, 6], [5, 1, 6, 6, 6, 6, 6, 6]], np.int32)
  return tiny_block_causal_denoiser(), tokens


@pytest.fixture
def use_jax_threefry(monkeypatch):
  """Call to run the samplers as they were (keys not rewrapped); compiled programs are
  dropped then and after the test, so that neither version reuses the other's."""
  def use():
    monkeypatch.setattr(unrolled_threefry, "as_unrolled", lambda key: key)
    jax.clear_caches()
  yield use
  jax.clear_caches()


SAMPLERS = [("first_hitting", {}), ("fef", dict(block_length=2, cache="exact", window=2)),
            ("fef", dict(window=3, temperature=0.7))]


@pytest.mark.parametrize("method,options", SAMPLERS)
def test_samples_equal_those_of_jax_threefry(block_causal, use_jax_threefry, method, options):
  denoiser, tokens = block_causal
  key = jax.random.key(4)
  unrolled = fj.sample(denoiser, tokens, key, method, mask_id=6, **options)
  use_jax_threefry()
  rolled = fj.sample(denoiser, tokens, key, method, mask_id=6, **options)
  jax.tree.map(np.testing.assert_array_equal, unrolled, rolled)


@pytest.mark.parametrize("method,options", SAMPLERS[:2])
def test_no_random_draw_is_a_loop_inside_the_sampler(block_causal, use_jax_threefry, method,
                                                     options):
  # On CPU a jax.random call on a threefry key is a `while` loop of its own; the
  # samplers' loops (steps, and FeF's rounds) must be the only ones left.
  denoiser, tokens = block_causal
  key = jax.random.key(4)
  expected = 1 if method == "first_hitting" else 2
  loops = loop_ops.sampler_loop_ops(denoiser, tokens, key, method, mask_id=6, **options)
  assert len(loops) == expected
  use_jax_threefry()
  rolled = loop_ops.sampler_loop_ops(denoiser, tokens, key, method, mask_id=6, **options)
  assert len(rolled) > expected  # the check can fail: JAX's own lowering loops
