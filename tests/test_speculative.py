"""One verification round: acceptance statistics against the speculative-sampling formula."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax import speculative
from fef_jax.types import SampleStats
from fef_jax.warp import warp_log_probs

P_V = np.array([0.55, 0.25, 0.15, 0.05])


def _independent_chain(length):
  """Independent tokens with per-position law P_V: a Markov chain whose rows all equal P_V."""
  return fj.oracles.MarkovChain(jnp.asarray(P_V), jnp.tile(jnp.asarray(P_V), (4, 1)), length)


def _first_round(num_rows, length, window, seed):
  chain = _independent_chain(length)
  tokens = jnp.full((num_rows, length), chain.mask_id, jnp.int32)
  state = speculative.SpeculativeState(
      tokens_BxL=tokens,
      draft_features_BxLxF=jnp.zeros((num_rows, length, 4)),  # uniform drafts q = 1/V
      start_B=jnp.zeros((num_rows,), jnp.int32), round_B=jnp.zeros((num_rows,), jnp.int32),
      stats=SampleStats.zeros(num_rows), bad_logits_B=jnp.zeros((num_rows,), bool))
  rank = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (num_rows, length))
  keys = jax.random.split(jax.random.key(seed), num_rows)
  round_fn = jax.jit(functools.partial(
      speculative.verification_round, chain.logits_fn,
      functools.partial(warp_log_probs, mask_id=chain.mask_id), window=window,
      mask_id=chain.mask_id))
  return round_fn(state, rank, jnp.full((num_rows,), length, jnp.int32), keys), chain


def test_tokens_per_round_match_the_speculative_sampling_expectation():
  # Drafts q = uniform, targets p = P_V at every position, independently of the
  # prefix: each draft is accepted with probability beta = sum_v min(p_v, q_v).
  # A round of W copies commits c tokens with P(c >= i) = beta^(i-1), i <= W,
  # so E[c] = (1 - beta^W) / (1 - beta).
  num_rows, length, window = 60000, 10, 6
  state, _ = _first_round(num_rows, length, window, seed=0)
  beta = np.minimum(P_V, 0.25).sum()
  probs_c = np.array([beta ** (i - 1) * (1 - beta) for i in range(1, window)]
                     + [beta ** (window - 1)])
  values = np.arange(1, window + 1)
  mean, var = (probs_c * values).sum(), (probs_c * values**2).sum() - (probs_c * values).sum()**2
  assert abs(mean - (1 - beta**window) / (1 - beta)) < 1e-12
  committed = np.asarray(state.start_B)
  standard_error = np.sqrt(var / num_rows)
  assert abs(committed.mean() - mean) < 5 * standard_error, (committed.mean(), mean)
  # The whole distribution of c, not only its mean.
  counts = np.bincount(committed, minlength=window + 1)[1:]
  _, _, p_value = fj.stats.chi_square_gof(counts, probs_c)
  assert p_value > 1e-3, p_value
  accepted = np.asarray(state.stats.drafts_accepted).sum()
  examined = np.asarray(state.stats.drafts_examined).sum()
  assert abs(accepted / examined - beta) < 5 * np.sqrt(beta * (1 - beta) / examined)


def test_committed_tokens_follow_the_target_not_the_draft():
  num_rows, length, window = 60000, 10, 6
  state, chain = _first_round(num_rows, length, window, seed=1)
  tokens = np.asarray(state.tokens_BxL)
  for position in (0, 1, 3):
    decided = tokens[:, position][tokens[:, position] != chain.mask_id]
    _, _, p_value = fj.stats.chi_square_gof(np.bincount(decided, minlength=4), P_V)
    assert p_value > 1e-3, (position, p_value)
  # Positions past the first rejection are re-masked.
  committed = np.asarray(state.start_B)
  is_masked = tokens == chain.mask_id
  np.testing.assert_array_equal(is_masked, np.arange(length)[None, :] >= committed[:, None])


def test_one_round_costs_one_call_of_window_sequences():
  state, _ = _first_round(50, 10, 6, seed=2)
  np.testing.assert_array_equal(state.stats.nfe, 1)
  np.testing.assert_array_equal(state.stats.sequences, 6)
  assert np.all(np.asarray(state.start_B) >= 1)  # every round decides at least one


def test_a_round_warps_and_draws_only_its_window_of_targets():
  # Only the W targets' drafts are read, so a round must not warp (top-k/top-p sorts,
  # log-softmax) the L x V draft logits of every position: the warp sees [B, W, V].
  num_rows, length, window = 3, 10, 2
  chain = _independent_chain(length)
  seen_shapes = []

  def spy_warp(logits):
    seen_shapes.append(logits.shape)
    return warp_log_probs(logits, mask_id=chain.mask_id)

  state = speculative.SpeculativeState(
      tokens_BxL=jnp.full((num_rows, length), chain.mask_id, jnp.int32),
      draft_features_BxLxF=jnp.zeros((num_rows, length, 4)),
      start_B=jnp.zeros((num_rows,), jnp.int32), round_B=jnp.zeros((num_rows,), jnp.int32),
      stats=SampleStats.zeros(num_rows), bad_logits_B=jnp.zeros((num_rows,), bool))
  rank = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (num_rows, length))
  out = speculative.verification_round(
      chain.logits_fn, spy_warp, state, rank, jnp.full((num_rows,), length, jnp.int32),
      jax.random.split(jax.random.key(5), num_rows), window=window, mask_id=chain.mask_id)
  assert seen_shapes and all(shape == (num_rows, window, 4) for shape in seen_shapes), \
      seen_shapes
  # Drafts past the committed prefix are never written into the state.
  tokens = np.asarray(out.tokens_BxL)
  committed = np.asarray(out.start_B)
  np.testing.assert_array_equal(tokens == chain.mask_id,
                                np.arange(length)[None, :] >= committed[:, None])


def test_the_last_target_keeps_its_draft_when_the_window_runs_past_the_set():
  # At the set's last position the window's other targets are past the set; their
  # clipped positions coincide with the last target's, which must still be decided
  # from its own draft (or the residual), never left masked.
  num_rows, length, window = 2000, 6, 3
  chain = _independent_chain(length)
  tokens = jnp.concatenate([jnp.zeros((num_rows, length - 1), jnp.int32),
                            jnp.full((num_rows, 1), chain.mask_id, jnp.int32)], axis=1)
  state = speculative.SpeculativeState(
      tokens_BxL=tokens, draft_features_BxLxF=jnp.zeros((num_rows, length, 4)),
      start_B=jnp.full((num_rows,), length - 1, jnp.int32),
      round_B=jnp.zeros((num_rows,), jnp.int32), stats=SampleStats.zeros(num_rows),
      bad_logits_B=jnp.zeros((num_rows,), bool))
  rank = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (num_rows, length))
  out = jax.jit(functools.partial(
      speculative.verification_round, chain.logits_fn,
      functools.partial(warp_log_probs, mask_id=chain.mask_id), window=window,
      mask_id=chain.mask_id))(state, rank, jnp.full((num_rows,), length, jnp.int32),
                              jax.random.split(jax.random.key(6), num_rows))
  last = np.asarray(out.tokens_BxL)[:, -1]
  assert np.all(last != chain.mask_id)
  np.testing.assert_array_equal(out.start_B, length)
  # Drafted uniformly and accepted with min(1, p/q), or resampled: the target's law.
  _, _, p_value = fj.stats.chi_square_gof(np.bincount(last, minlength=4), P_V)
  assert p_value > 1e-3, p_value


def test_a_set_smaller_than_the_window_drafts_on_from_the_copy_that_reveals_it_all():
  # A set of 2 positions, 4 copies, every draft accepted (drafts from p itself): the
  # next drafts (here at the positions after the set) come from the copy after the
  # last target, which reveals the whole set. With a shared tail the copies past the
  # last target repeat it instead, so the next drafts see every target but the last.
  num_rows, length, window, set_size = 3, 6, 4, 2
  chain = _independent_chain(length)
  log_p_V = jnp.log(jnp.asarray(P_V, jnp.float32))

  def logits_fn(tokens_NxL):
    # P_V everywhere; after the set, the number of revealed set positions in slot 0.
    revealed_N = jnp.sum(tokens_NxL[:, :set_size] != chain.mask_id, axis=1)
    after_NxLxV = jnp.zeros(tokens_NxL.shape + (4,)).at[..., 0].set(revealed_N[:, None])
    return jnp.where((jnp.arange(length) >= set_size)[None, :, None], after_NxLxV,
                     jnp.broadcast_to(log_p_V, tokens_NxL.shape + (4,)))

  state = speculative.SpeculativeState(
      tokens_BxL=jnp.full((num_rows, length), chain.mask_id, jnp.int32),
      draft_features_BxLxF=jnp.broadcast_to(log_p_V, (num_rows, length, 4)),
      start_B=jnp.zeros((num_rows,), jnp.int32), round_B=jnp.zeros((num_rows,), jnp.int32),
      stats=SampleStats.zeros(num_rows), bad_logits_B=jnp.zeros((num_rows,), bool))
  rank = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (num_rows, length))
  outs = {}
  for shared_tail in (False, True):
    evaluator = speculative.CopyEvaluator(speculative.whole_sequences(logits_fn).evaluate,
                                          shared_tail=shared_tail)
    outs[shared_tail] = speculative.verification_round(
        evaluator, functools.partial(warp_log_probs, mask_id=chain.mask_id), state, rank,
        jnp.full((num_rows,), set_size, jnp.int32),
        jax.random.split(jax.random.key(7), num_rows), window=window, mask_id=chain.mask_id)
  for shared_tail, revealed in ((False, set_size), (True, set_size - 1)):
    out = outs[shared_tail]
    np.testing.assert_array_equal(out.start_B, set_size)
    np.testing.assert_array_equal(out.stats.drafts_accepted, set_size)
    np.testing.assert_array_equal(out.draft_features_BxLxF[:, set_size:, 0], revealed)
  # The rule changes only where the next drafts come from, not the decisions.
  np.testing.assert_array_equal(outs[False].tokens_BxL, outs[True].tokens_BxL)
