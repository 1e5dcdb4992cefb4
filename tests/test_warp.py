"""Logit warping: checked against direct numpy constructions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax.warp import entropy, warp_log_probs
from tests import roundoff


def _logits(seed=0, shape=(3, 7)):
  return jax.random.normal(jax.random.key(seed), shape) * 2.0


def test_plain_softmax_and_normalization():
  logits = _logits()
  out = warp_log_probs(logits, mask_id=100)
  x = np.asarray(logits)
  ref = x - np.log(np.exp(x).sum(-1, keepdims=True))  # float32 numpy, unshifted
  # Both sides are float32. XLA's log-softmax errs by at most
  # gamma(log_softmax_chain(V)) * (1 + |log p|); numpy's (exp, a sum of V positive
  # terms, log, subtraction, with |log sum| <= |x| + |log p|) by at most that chain
  # times (1 + |x| + |log p|).
  bound = roundoff.gamma(roundoff.log_softmax_chain(x.shape[-1])) * (
      2.0 + np.abs(x) + 2.0 * np.abs(ref))
  roundoff.assert_within(out, ref, bound, "log-softmax")


def test_mask_inside_vocabulary_gets_zero_probability():
  logits = _logits().at[:, 2].set(50.0)  # the mask would dominate if not removed
  probs = jnp.exp(warp_log_probs(logits, mask_id=2))
  assert np.all(np.asarray(probs[:, 2]) == 0.0)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_temperature_zero_is_point_mass_at_argmax():
  logits = _logits()
  out = np.asarray(warp_log_probs(logits, mask_id=100, temperature=0.0))
  argmax = np.asarray(logits).argmax(-1)
  for row, best in enumerate(argmax):
    assert out[row, best] == 0.0
    assert np.all(np.delete(out[row], best) == -np.inf)


def test_temperature_scales_logits():
  logits = _logits()
  out = warp_log_probs(logits, mask_id=100, temperature=0.5)
  np.testing.assert_allclose(out, jax.nn.log_softmax(logits / 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_k_keeps_k_most_likely(k):
  logits = _logits()
  probs = np.exp(np.asarray(warp_log_probs(logits, mask_id=100, top_k=k)))
  for row in range(logits.shape[0]):
    keep = np.argsort(-np.asarray(logits[row]))[:k]
    ref = np.zeros(logits.shape[1])
    ref[keep] = np.exp(np.asarray(logits[row])[keep])
    np.testing.assert_allclose(probs[row], ref / ref.sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("top_p", [0.3, 0.7, 0.95])
def test_top_p_keeps_smallest_set_reaching_mass(top_p):
  logits = _logits(1)
  base = np.exp(np.asarray(jax.nn.log_softmax(logits)))
  probs = np.exp(np.asarray(warp_log_probs(logits, mask_id=100, top_p=top_p)))
  for row in range(base.shape[0]):
    order = np.argsort(-base[row])
    mass_before = np.cumsum(base[row][order]) - base[row][order]
    keep = order[mass_before < top_p]
    ref = np.zeros_like(base[row])
    ref[keep] = base[row][keep]
    np.testing.assert_allclose(probs[row], ref / ref.sum(), rtol=1e-5, atol=1e-6)


def test_entropy_matches_numpy_and_handles_zero_probabilities():
  log_probs = warp_log_probs(_logits(), mask_id=100, top_k=3)
  p = np.exp(np.asarray(log_probs))
  ref = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
  np.testing.assert_allclose(entropy(log_probs), ref, rtol=1e-5)
