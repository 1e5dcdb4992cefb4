"""The samplers' shared randomness: uniforms in range per row, inverse-CDF categorical draws."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import noise

# Zeros first, in the middle, last, and a block of them: with V = 11 a block holds 4
# tokens (the last block 3 and a padding slot), so every kind of block edge is there.
WEIGHTS = np.array([0.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.5, 0.0])


def test_uniforms_are_in_range_split_as_asked_and_per_row():
  keys_B = jax.random.split(jax.random.key(0), 3)
  pieces = noise.uniforms(keys_B, (4, 1, 2))
  assert [p.shape for p in pieces] == [(3, 4), (3, 1), (3, 2)]
  u_BxN = np.concatenate([np.asarray(p) for p in pieces], axis=1)
  assert np.all(u_BxN >= np.finfo(np.float32).tiny) and np.all(u_BxN < 1.0)
  # Row b reads only key b: another batch around it does not change its draw.
  alone = np.concatenate([np.asarray(p) for p in noise.uniforms(keys_B[1:2], (4, 1, 2))], 1)
  np.testing.assert_array_equal(alone[0], u_BxN[1])
  assert len(np.unique(u_BxN)) == u_BxN.size


def _grid_uniforms(num: int) -> np.ndarray:
  """float32[num * num, 2]: every pair of the midpoints `(i + 1/2) / num`."""
  mid = (np.arange(num) + 0.5) / num
  return np.stack(np.meshgrid(mid, mid, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)


@pytest.mark.parametrize("vocab_size", [1, 2, 11, 37, 1000])
def test_weighted_draw_maps_a_uniform_grid_onto_the_weights(vocab_size):
  """A deterministic quadrature of the law: the draws of an `n x n` grid of uniform
  pairs, counted, are the normalized weights up to the grid's resolution (a block's
  share is off by at most `1/n`, and a token's share of its block too)."""
  rng = np.random.default_rng(vocab_size)
  weights = (WEIGHTS if vocab_size == 11 else
             rng.gamma(0.3, size=vocab_size) * (rng.random(vocab_size) < 0.7))
  weights[rng.integers(vocab_size)] += 1.0  # at least one positive weight
  num = 400
  draws = np.asarray(jax.jit(noise.weighted_draw)(
      jnp.broadcast_to(jnp.asarray(weights, jnp.float32), (num * num, vocab_size)),
      jnp.asarray(_grid_uniforms(num))))
  assert draws.dtype == np.int32 and draws.shape == (num * num,)
  assert np.all(weights[draws] > 0)
  frequency = np.bincount(draws, minlength=vocab_size) / num**2
  probs = weights / weights.sum()
  block = noise._block_size(vocab_size)
  padded = np.pad(probs, (0, -vocab_size % block)).reshape(-1, block)
  block_share = np.repeat(padded.sum(1), block)[:vocab_size]
  share_in_block = np.where(block_share > 0, probs / np.maximum(block_share, 1e-30), 0)
  # Grid resolution (1/n at each level, both counted) plus float32 round-off of the sums.
  bound = (share_in_block + block_share) / num + 1e-5
  assert np.all(np.abs(frequency - probs) <= bound), np.max(np.abs(frequency - probs) - bound)


def test_categorical_draws_softmax_with_the_samplers_uniforms():
  probs = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
  with np.errstate(divide="ignore"):
    log_probs = jnp.asarray(np.log(probs), jnp.float32) + 3.0  # unnormalized is fine
  num = 20_000
  (uniform_N2,) = noise.uniforms(jax.random.split(jax.random.key(1), num),
                                 (noise.UNIFORMS_PER_DRAW,))
  draws = np.asarray(jax.jit(noise.categorical)(
      jnp.broadcast_to(log_probs, (num, probs.size)), uniform_N2))
  assert draws.dtype == np.int32 and not np.any(draws == 4)
  _, _, p_value = fj.stats.chi_square_gof(np.bincount(draws, minlength=5)[:4], probs[:4])
  assert p_value > 1e-3
  # The test can fail: the same uniforms drawn from a flatter law are rejected.
  flatter = np.asarray(noise.categorical(jnp.broadcast_to(log_probs / 2, (num, 5)), uniform_N2))
  _, _, wrong_p = fj.stats.chi_square_gof(np.bincount(flatter, minlength=5)[:4], probs[:4])
  assert wrong_p < 1e-6


def test_extreme_uniforms_never_draw_an_excluded_entry():
  """`u * total` may round up to the total (u just below 1): the draw must stay on a
  positive weight, not step onto the zeros or the padding after the last one."""
  below_one = np.nextafter(np.float32(1), np.float32(0))
  tiny = np.finfo(np.float32).tiny
  edges = np.array([[a, b] for a in (tiny, 0.5, below_one) for b in (tiny, 0.5, below_one)],
                   np.float32)
  for weights in (WEIGHTS, WEIGHTS * 3e-38, WEIGHTS * 1e30, np.r_[WEIGHTS[:-2], 1e-30, 0]):
    draws = np.asarray(noise.weighted_draw(
        jnp.broadcast_to(jnp.asarray(weights, jnp.float32), (len(edges), weights.size)),
        jnp.asarray(edges)))
    assert np.all(weights[draws] > 0), (weights, draws)
  with np.errstate(divide="ignore"):
    log_probs = jnp.asarray(np.log(WEIGHTS), jnp.float32)
  draws = np.asarray(noise.categorical(jnp.broadcast_to(log_probs, (len(edges), 11)), edges))
  assert np.all(WEIGHTS[draws] > 0)


def test_a_running_sum_that_moves_at_a_zero_weight_does_not_draw_it():
  """A tree-shaped cumulative sum may round the sum at a zero weight above the one
  before it; the first sum above the threshold would then be at that index."""
  weights = jnp.asarray([1.0, 0.0, 1.0])
  cumulative = jnp.asarray([1.0, np.nextafter(np.float32(1), np.float32(2)), 2.0])
  # Threshold u * 2 = 1: past the first token's interval, into the third's.
  assert int(noise._first_above(weights, cumulative, jnp.asarray(0.5))) == 2
  assert int(noise._first_above(weights, cumulative, jnp.asarray(0.25))) == 0


def test_rows_without_a_law_draw_an_id_in_range():
  """NaN logits, or no token allowed, are reported by the samplers; the draw itself
  must still be a valid id so that nothing indexes out of range first."""
  log_probs = jnp.asarray([[jnp.nan] * 11, [-jnp.inf] * 11, [0.0] * 10 + [jnp.nan]])
  draws = np.asarray(noise.categorical(log_probs, jnp.full((3, 2), 0.999, jnp.float32)))
  assert np.all((draws >= 0) & (draws < 11))
  zero = np.asarray(noise.weighted_draw(jnp.zeros((1, 11)), jnp.full((1, 2), 0.5)))
  assert 0 <= zero[0] < 11


def test_weighted_draw_refuses_uniforms_of_the_wrong_shape():
  with pytest.raises(ValueError, match="expected \\(4, 2\\)"):
    noise.weighted_draw(jnp.ones((4, 11)), jnp.full((4, 11), 0.5))
