"""Prefix-revealed copies and the exact prefix-factorized joint."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax import posterior
from fef_jax.samplers import selection
from fef_jax.warp import warp_log_probs


def test_copies_match_a_direct_loop():
  rng = np.random.default_rng(0)
  batch, length, window, mask = 3, 6, 4, 9
  tokens = np.full((batch, length), mask)
  values = rng.integers(0, 5, (batch, length))
  rank = np.full((batch, length), length)
  for b in range(batch):
    rank[b, rng.permutation(length)[:5]] = np.arange(5)
  start = np.array([0, 2, 4])
  last_copy = np.array([3, 1, 0])
  args = jnp.asarray(tokens), jnp.asarray(values), jnp.asarray(rank), jnp.asarray(start), window
  copies = np.asarray(posterior.prefix_revealed_copies(*args))
  # With `last_copy`, the copies after it repeat it (copy `c` reveals min(c, last) values).
  capped = np.asarray(posterior.prefix_revealed_copies(*args, jnp.asarray(last_copy)))
  for b in range(batch):
    for c in range(window):
      for got, reveals in ((copies, c), (capped, min(c, last_copy[b]))):
        expected = tokens[b].copy()
        for pos in range(length):
          if start[b] <= rank[b, pos] < start[b] + reveals:
            expected[pos] = values[b, pos]
        np.testing.assert_array_equal(got[b, c], expected)


def _conditional_joint(probs, xt, positions, values, mask):
  """log p(x^S = values | xt) by direct summation over the table (independent reference)."""
  states = np.array(list(np.ndindex(*probs.shape)))
  weights = probs.reshape(-1)
  consistent = np.all((xt == mask) | (states == xt), axis=1)
  hit = consistent & np.all(states[:, positions] == values, axis=1)
  return np.log(weights[hit].sum() / weights[consistent].sum())


def test_joint_log_prob_is_the_exact_conditional_joint_for_every_order():
  table = fj.oracles.JointTable.random(jax.random.key(3), vocab_size=3, length=5,
                                       concentration=0.3)
  probs, mask = np.asarray(table.probs), table.mask_id
  rng = np.random.default_rng(1)
  rows, expected, xts, valuess, ranks = 12, [], [], [], []
  for _ in range(rows):
    xt = np.full(5, mask)
    reveal = rng.permutation(5)[:rng.integers(0, 3)]
    xt[reveal] = rng.integers(0, 3, reveal.size)
    masked = np.flatnonzero(xt == mask)
    order = rng.permutation(masked)[:rng.integers(1, masked.size + 1)]
    values = rng.integers(0, 3, 5)
    rank = np.full(5, 5)
    rank[order] = np.arange(order.size)
    xts.append(xt), valuess.append(values), ranks.append(rank)
    expected.append(_conditional_joint(probs, xt, order, values[order], mask))
  got = posterior.joint_log_prob(
      table.logits_fn, jnp.asarray(np.stack(xts)), jnp.asarray(np.stack(valuess)),
      jnp.asarray(np.stack(ranks)), functools.partial(warp_log_probs, mask_id=mask))
  finite = np.isfinite(expected)
  np.testing.assert_allclose(np.asarray(got)[finite], np.array(expected)[finite],
                             rtol=1e-4, atol=1e-4)


def test_sort_free_ranks_and_positions_equal_the_sorted_ones():
  # Left-to-right ranks by a cumulative sum, and the positions of given ranks by a
  # comparison, what the sampler computes in place of argsorts.
  rng = np.random.default_rng(5)
  batch, length = 6, 11
  eligible = jnp.asarray(rng.random((batch, length)) < 0.5).at[0].set(False).at[1].set(True)
  position_scores = selection.scores("position", None, jnp.zeros((batch, length), jnp.int32),
                                     None)
  rank = selection.rank_by_score(position_scores, eligible)
  np.testing.assert_array_equal(selection.rank_left_to_right(eligible), rank)
  ranks = jnp.asarray(rng.integers(0, length, (batch, 4)), jnp.int32)
  count = np.asarray(jnp.sum(eligible, axis=1))
  got = np.asarray(posterior.positions_of_ranks(rank, ranks))
  want = np.asarray(jnp.take_along_axis(posterior.positions_by_rank(rank), ranks, axis=1))
  held = np.asarray(ranks) < count[:, None]  # ranks past the set are held by no position
  np.testing.assert_array_equal(got[held], want[held])
  assert held.any() and (~held).any()
