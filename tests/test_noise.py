"""The samplers' shared randomness: uniforms in range per row, Gumbel-max categorical draws."""
import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax import noise


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


def test_categorical_draws_softmax_and_never_an_excluded_entry():
  probs = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
  with np.errstate(divide="ignore"):
    log_probs = jnp.asarray(np.log(probs), jnp.float32) + 3.0  # unnormalized is fine
  num = 20_000
  (uniform_NxV,) = noise.uniforms(jax.random.split(jax.random.key(1), num), (probs.size,))
  draws = np.asarray(jax.jit(noise.categorical)(
      jnp.broadcast_to(log_probs, (num, probs.size)), uniform_NxV))
  assert draws.dtype == np.int32 and not np.any(draws == 4)
  counts = np.bincount(draws, minlength=probs.size)[:4]
  _, _, p_value = fj.stats.chi_square_gof(counts, probs[:4])
  assert p_value > 1e-3
  # The test can fail: the Gumbel's sign flipped (argmax of logits minus a Gumbel) is not
  # softmax-distributed.
  wrong = np.asarray(jnp.argmax(log_probs + jnp.log(-jnp.log(uniform_NxV)), axis=-1))
  _, _, wrong_p = fj.stats.chi_square_gof(np.bincount(wrong, minlength=5)[:4], probs[:4])
  assert wrong_p < 1e-6
