"""The judge's training loss: next-token cross-entropy of a causal model."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax.train import causal_loss
from tests import roundoff


def _bigram(vocab_size, seed=0):
  return np.log(np.random.default_rng(seed).dirichlet(np.ones(vocab_size), size=vocab_size))


def test_loss_is_the_mean_next_token_nll_over_unpadded_targets():
  vocab = 6
  log_probs = _bigram(vocab)
  seen = []

  def apply_fn(params, tokens_BxL, valid_BxL, t_B):
    assert params == "params" and t_B is None
    seen.append((np.asarray(tokens_BxL), np.asarray(valid_BxL)))
    return jnp.asarray(log_probs, jnp.float32)[tokens_BxL]
  tokens = np.random.default_rng(1).integers(0, vocab, size=(3, 7)).astype(np.int32)
  valid = np.ones((3, 7), bool)
  valid[1, 5:] = False  # right padding: targets 5 and 6 of row 1 are not scored
  terms = [-log_probs[row[i - 1], row[i]] for r, row in enumerate(tokens)
           for i in range(1, 7) if valid[r, i]]
  loss, metrics = causal_loss.loss_fn("params", apply_fn,
                                      {"tokens": jnp.asarray(tokens), "valid": jnp.asarray(valid)})
  assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
  assert float(metrics["nll_bits"]) == pytest.approx(np.mean(terms) / math.log(2), rel=1e-5)
  # The model reads the data itself: no masks, no shifted-in token.
  np.testing.assert_array_equal(seen[0][0], tokens)
  np.testing.assert_array_equal(seen[0][1], valid)
  evaluated = causal_loss.eval_metrics("params", apply_fn, {"tokens": jnp.asarray(tokens),
                                                            "valid": jnp.asarray(valid)})
  assert float(evaluated["perplexity"]) == pytest.approx(math.exp(np.mean(terms)), rel=1e-5)


def test_next_token_nll_reads_each_position_for_the_next_token():
  logits = jnp.log(jnp.array([[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]]))
  nll = causal_loss.next_token_nll(logits, jnp.array([[1, 0, 1]]))
  want = np.array([[-math.log(0.7), -math.log(0.8)]])
  # float32 against exact: each logit is off by the rounding of p (u) and the log
  # (TRANSCENDENTAL u |log p|, |log p| <= log 5), which moves a log-softmax entry by
  # at most twice that; then the log-softmax's own round-off.
  logit_error = roundoff.gamma(1 + roundoff.TRANSCENDENTAL * math.log(5))
  bound = 2 * logit_error + roundoff.gamma(roundoff.log_softmax_chain(2)) * (1 + want)
  roundoff.assert_within(nll, want, bound, "next-token NLL")
