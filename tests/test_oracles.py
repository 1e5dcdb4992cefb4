"""Exact oracles: conditionals, probabilities and marginals against brute-force enumeration."""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax import oracles
from tests import roundoff

# float32 conditionals against float64 brute-force sums.
_ATOL = 2e-5


def _hmm_depth(hidden, vocab_size, length):
  """Roundings of a forward-backward conditional: per position, forward and backward
  each multiply (1), normalize over H (H) and multiply by the transition (H); then the
  product of both, its normalization (H), the emission (H) and the normalization over V."""
  return 2 * length * (2 * hidden + 1) + 1 + 2 * hidden + vocab_size + 1


def _brute_force_conditionals(probs, tokens_L, mask_id):
  """float64[L, V] P(x_i = v | revealed tokens) by direct summation; None if impossible."""
  vocab_size, length = probs.shape[0], probs.ndim
  conditionals_LxV = np.zeros((length, vocab_size))
  total = 0.0
  for state in itertools.product(range(vocab_size), repeat=length):
    if all(t in (mask_id, s) for t, s in zip(tokens_L, state)):
      total += probs[state]
      conditionals_LxV[np.arange(length), state] += probs[state]
  return conditionals_LxV / total if total > 0 else None


def _hmm_joint(initial_H, transition_HxH, emission_HxV, length):
  """float64[V]*L joint of an HMM by summing over every hidden path."""
  hidden, vocab_size = emission_HxV.shape
  joint = np.zeros((vocab_size,) * length)
  for path in itertools.product(range(hidden), repeat=length):
    p_path = initial_H[path[0]] * np.prod(
        [transition_HxH[a, b] for a, b in zip(path[:-1], path[1:])])
    joint += p_path * functools.reduce(np.multiply.outer, [emission_HxV[h] for h in path])
  return joint


def _chain_joint(initial_V, transition_VxV, length):
  """float64[V]*L joint of a Markov chain by the product formula over every state."""
  vocab_size = initial_V.shape[0]
  joint = np.zeros((vocab_size,) * length)
  for state in itertools.product(range(vocab_size), repeat=length):
    joint[state] = initial_V[state[0]] * np.prod(
        [transition_VxV[a, b] for a, b in zip(state[:-1], state[1:])])
  return joint


def _random_rows(seed, n, length, vocab_size, reveal_prob):
  """int32[n, L] random tokens, each masked with prob 1 - reveal_prob; first row all
  masked, second all revealed."""
  rng = np.random.default_rng(seed)
  tokens_NxL = rng.integers(0, vocab_size, (n, length))
  revealed_NxL = rng.random((n, length)) < reveal_prob
  revealed_NxL[0], revealed_NxL[1] = False, True
  return np.where(revealed_NxL, tokens_NxL, vocab_size).astype(np.int32)


def _assert_exact_logits(logits_NxLxV, tokens_NxL, probs):
  """Masked positions: exp(logits) equals the brute-force conditionals (or logits are
  0 for impossible evidence); revealed positions: 0 at the token, -inf elsewhere."""
  logits_NxLxV = np.asarray(logits_NxLxV)
  vocab_size = probs.shape[0]
  for tokens_L, logits_LxV in zip(tokens_NxL, logits_NxLxV):
    masked_L = tokens_L == vocab_size
    expected_LxV = _brute_force_conditionals(probs, tokens_L, vocab_size)
    if expected_LxV is None:
      np.testing.assert_array_equal(logits_LxV[masked_L], 0.0)
    else:
      np.testing.assert_allclose(np.exp(logits_LxV[masked_L]), expected_LxV[masked_L],
                                 atol=_ATOL)
    onehot_LxV = np.arange(vocab_size) == tokens_L[:, None]
    np.testing.assert_array_equal(logits_LxV[~masked_L],
                                  np.where(onehot_LxV, 0.0, -np.inf)[~masked_L])


def _all_states(vocab_size, length):
  return np.array(list(itertools.product(range(vocab_size), repeat=length)), np.int32)


def _assert_marginals_match(oracle, joint, depth):
  """marginals() and every pair_marginal(i, j) equal sums of the joint table.

  Both are sums and products of non-negative float32 numbers (no cancellation), so
  each is within gamma(depth) relative of exact, `depth` the most roundings along one
  term's chain (in whatever order the CPU sums)."""
  length = joint.ndim
  rtol = roundoff.gamma(depth)
  expected_LxV = np.stack([joint.sum(axis=tuple(a for a in range(length) if a != l))
                           for l in range(length)])
  np.testing.assert_allclose(oracle.marginals(), expected_LxV, rtol=rtol, atol=0)
  for i, j in itertools.permutations(range(length), 2):
    pair_VxV = joint.sum(axis=tuple(a for a in range(length) if a not in (i, j)))
    np.testing.assert_allclose(oracle.pair_marginal(i, j),
                               pair_VxV if i < j else pair_VxV.T, rtol=rtol, atol=0)


def _table_marginal_depth(table):
  """A JointTable marginal sums V^(L-1) of its float32 probabilities."""
  return table.probs.size // table.vocab_size


def _hmm_marginal_depth(hidden, length, inputs=0):
  """An HMM marginal: L - 1 steps of a product and a sum over H, the emission (H);
  a pair marginal at most twice that (the hidden marginal, the transition's power, the
  two emissions); plus `inputs` roundings of float64 parameters to float32 along a
  path."""
  return 2 * length * hidden + 1 + inputs


@pytest.fixture(scope="module")
def table():
  return oracles.JointTable.random(0, vocab_size=3, length=4, concentration=0.5)


def test_joint_table_conditionals_match_brute_force(table):
  tokens_NxL = _random_rows(0, 60, 4, 3, reveal_prob=0.4)
  _assert_exact_logits(table.logits_fn(tokens_NxL), tokens_NxL, np.asarray(table.probs))


def test_joint_table_sizes(table):
  assert (table.vocab_size, table.length, table.mask_id) == (3, 4, 3)
  assert table.logits_fn(_random_rows(1, 5, 4, 3, 0.5)).shape == (5, 4, 3)


def test_joint_table_rows_are_independent_and_jit_agrees(table):
  tokens_NxL = jnp.asarray(_random_rows(2, 23, 4, 3, reveal_prob=0.5))
  batch_NxLxV = table.logits_fn(tokens_NxL)
  jitted = jax.jit(table.logits_fn)
  bound = roundoff.two_pass_log_prob_bound(batch_NxLxV, roundoff.joint_table_depth(table))
  roundoff.assert_within(jitted(tokens_NxL), batch_NxLxV, bound, "jitted")
  for n in range(0, 23, 5):
    roundoff.assert_within(jitted(tokens_NxL[n:n + 1])[0], batch_NxLxV[n], bound[n],
                           f"row {n} alone")
  chunked = oracles.JointTable(table.probs, rows_per_chunk=7)  # 3 chunks + remainder
  roundoff.assert_within(chunked.logits_fn(tokens_NxL), batch_NxLxV, bound, "chunked")


def test_joint_table_log_prob_and_marginals(table):
  probs = np.asarray(table.probs, np.float64)
  states_SxL = _all_states(3, 4)
  np.testing.assert_allclose(table.log_prob(states_SxL),
                             np.log(probs[tuple(states_SxL.T)]), rtol=1e-5)
  _assert_marginals_match(table, probs, _table_marginal_depth(table))


def test_joint_table_tiny_probabilities_are_normalized_per_row():
  probs = np.zeros((2, 2, 2))
  probs[0] = 0.25
  probs[1, 0, 0], probs[1, 1, 1] = 1e-40, 3e-40  # below float32's smallest normal
  table = oracles.JointTable(probs)
  logits_1xLxV = table.logits_fn(jnp.array([[1, 2, 2]]))
  # Stored as float32 log-probabilities near log(1e-40) = -92.1, each off by up to
  # 92.1 u, so their ratio by 2 * 92.1 u relative; then exp (TRANSCENDENTAL u), the
  # normalization (3 roundings), the log (TRANSCENDENTAL u |logit| <= 2 TRANSCENDENTAL u)
  # and numpy's exp here (TRANSCENDENTAL u).
  depth = 2 * math.ceil(-math.log(1e-40)) + 4 * roundoff.TRANSCENDENTAL + 3
  np.testing.assert_allclose(np.exp(logits_1xLxV[0, 1:]), [[0.25, 0.75]] * 2,
                             rtol=roundoff.gamma(depth), atol=0)


def test_from_phrases():
  smoothing = 0.04
  table = oracles.JointTable.from_phrases([[0, 1], [2, 3]], [0.75, 0.25], vocab_size=4,
                                          smoothing=smoothing)
  expected = np.full((4, 4), smoothing / 16)
  expected[0, 1] += 0.75 * (1 - smoothing)
  expected[2, 3] += 0.25 * (1 - smoothing)
  # Normalized in float64, then rounded to float32 once: u relative, a second u for
  # the float64 arithmetic (IEEE operations, the same on every CPU).
  np.testing.assert_allclose(table.probs, expected, rtol=roundoff.gamma(2), atol=0)
  _assert_exact_logits(table.logits_fn(jnp.array([[0, 4], [4, 3], [4, 4]])),
                       np.array([[0, 4], [4, 3], [4, 4]]), expected)


def test_random_constructors_are_deterministic():
  a = oracles.JointTable.random(jax.random.key(7), 2, 3, 0.3)
  b = oracles.JointTable.random(7, 2, 3, 0.3)
  c = oracles.JointTable.random(8, 2, 3, 0.3)
  np.testing.assert_array_equal(a.probs, b.probs)
  assert not np.allclose(a.probs, c.probs)
  h1 = oracles.HiddenMarkovModel.random(3, 2, 4, 5, 1.0)
  h2 = oracles.HiddenMarkovModel.random(3, 2, 4, 5, 1.0)
  np.testing.assert_array_equal(h1.emission_HxV, h2.emission_HxV)
  np.testing.assert_array_equal(h1.transition_HxH, h2.transition_HxH)


def test_hmm_matches_brute_force_joint():
  hmm = oracles.HiddenMarkovModel.random(1, hidden=3, vocab_size=3, length=5,
                                         concentration=0.7)
  joint = _hmm_joint(*(np.asarray(a, np.float64) for a in
                       (hmm.initial_H, hmm.transition_HxH, hmm.emission_HxV)), 5)
  assert (hmm.vocab_size, hmm.length, hmm.mask_id) == (3, 5, 3)
  tokens_NxL = _random_rows(3, 60, 5, 3, reveal_prob=0.5)
  _assert_exact_logits(hmm.logits_fn(tokens_NxL), tokens_NxL, joint)
  states_SxL = _all_states(3, 5)
  np.testing.assert_allclose(hmm.log_prob(states_SxL), np.log(joint[tuple(states_SxL.T)]),
                             rtol=1e-5)
  _assert_marginals_match(hmm, joint, _hmm_marginal_depth(3, 5))


def test_markov_chain_matches_brute_force_joint():
  rng = np.random.default_rng(4)
  initial_V, transition_VxV = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3), 3)
  chain = oracles.MarkovChain(initial_V, transition_VxV, 5)
  joint = _chain_joint(initial_V, transition_VxV, 5)
  tokens_NxL = _random_rows(5, 60, 5, 3, reveal_prob=0.5)
  _assert_exact_logits(chain.logits_fn(tokens_NxL), tokens_NxL, joint)
  chunked = oracles.MarkovChain(initial_V, transition_VxV, 5, rows_per_chunk=7)
  logits_NxLxV = np.asarray(chain.logits_fn(tokens_NxL))
  roundoff.assert_within(chunked.logits_fn(tokens_NxL), logits_NxLxV,
                         roundoff.two_pass_log_prob_bound(logits_NxLxV, _hmm_depth(3, 3, 5)),
                         "chunked")
  states_SxL = _all_states(3, 5)
  np.testing.assert_allclose(chain.log_prob(states_SxL),
                             np.log(joint[tuple(states_SxL.T)]), rtol=1e-5)
  # The float64 initial and transition probabilities are rounded to float32 once each:
  # up to L more roundings along a path.
  depth = _hmm_marginal_depth(3, 5, inputs=5)
  _assert_marginals_match(chain, joint, depth)
  for i, j in [(0, 1), (1, 4), (4, 2)]:
    first, second = min(i, j), max(i, j)
    expected_VxV = ((initial_V @ np.linalg.matrix_power(transition_VxV, first))[:, None]
                    * np.linalg.matrix_power(transition_VxV, second - first))
    np.testing.assert_allclose(chain.pair_marginal(i, j),
                               expected_VxV if i < j else expected_VxV.T,
                               rtol=roundoff.gamma(depth), atol=0)


def test_sticky_chain():
  chain = oracles.MarkovChain.sticky(4, 3, 0.7)
  np.testing.assert_allclose(chain.initial_H, [0.25] * 4)
  np.testing.assert_allclose(chain.transition_HxH, np.where(np.eye(4), 0.7, 0.1), rtol=1e-6)


def _nearest_revealed_conditional(transition_VxV, tokens_L, i):
  """P(x_i | x) of a uniform-start stationary chain from the nearest revealed tokens."""
  vocab_size = transition_VxV.shape[0]
  revealed = np.flatnonzero(tokens_L != vocab_size)
  left, right = revealed[revealed < i], revealed[revealed > i]
  weights_V = np.ones(vocab_size)
  if left.size:
    weights_V *= np.linalg.matrix_power(transition_VxV, i - left[-1])[tokens_L[left[-1]]]
  if right.size:
    weights_V *= np.linalg.matrix_power(transition_VxV, right[0] - i)[:, tokens_L[right[0]]]
  return weights_V / weights_V.sum()


def test_long_sequences_do_not_underflow():
  chain = oracles.MarkovChain.sticky(4, 64, 0.8)
  tokens_NxL = _random_rows(6, 12, 64, 4, reveal_prob=0.7)
  logits_NxLxV = np.asarray(chain.logits_fn(tokens_NxL))
  transition_VxV = np.asarray(chain.transition_HxH, np.float64)
  for tokens_L, logits_LxV in zip(tokens_NxL, logits_NxLxV):
    for i in np.flatnonzero(tokens_L == 4):
      np.testing.assert_allclose(np.exp(logits_LxV[i]),
                                 _nearest_revealed_conditional(transition_VxV, tokens_L, i),
                                 atol=_ATOL)
  hmm = oracles.HiddenMarkovModel.random(2, hidden=4, vocab_size=5, length=64,
                                         concentration=0.2)
  tokens_NxL = _random_rows(7, 12, 64, 5, reveal_prob=0.7)
  logits_NxLxV = np.asarray(hmm.logits_fn(tokens_NxL))
  masked_NxL = tokens_NxL == 5
  assert np.all(np.isfinite(hmm.log_prob(np.minimum(tokens_NxL, 4))))
  assert not np.any(np.isnan(logits_NxLxV))
  np.testing.assert_allclose(np.exp(logits_NxLxV[masked_NxL]).sum(-1), 1.0, atol=1e-5)
  assert np.all(np.max(logits_NxLxV[masked_NxL], axis=-1) > -np.inf)


def test_impossible_evidence_gives_uniform_logits():
  chain = oracles.MarkovChain.sticky(3, 6, stay_prob=1.0)
  tokens_NxL = jnp.array([[0, 3, 3, 1, 3, 3], [2, 3, 3, 2, 3, 3]])
  logits_NxLxV = np.asarray(chain.logits_fn(tokens_NxL))
  np.testing.assert_array_equal(logits_NxLxV[0, [1, 2, 4, 5]], 0.0)
  np.testing.assert_array_equal(logits_NxLxV[0, 3], [-np.inf, 0.0, -np.inf])
  np.testing.assert_array_equal(logits_NxLxV[1, 4], [-np.inf, -np.inf, 0.0])
  np.testing.assert_array_equal(chain.log_prob(jnp.array([[0, 0, 0, 1, 1, 1]])), -np.inf)
  table = oracles.JointTable.from_phrases([[0, 1, 2], [2, 3, 0]], [0.5, 0.5], 4, 0.0)
  logits_1xLxV = np.asarray(table.logits_fn(jnp.array([[0, 4, 0]])))
  np.testing.assert_array_equal(logits_1xLxV[0, 1], 0.0)
  np.testing.assert_array_equal(table.log_prob(jnp.array([[0, 0, 0]])), -np.inf)


@pytest.mark.parametrize("probs, message", [
    (np.full((2, 2), 0.3), "sum to 1"),
    (np.array([[0.6, -0.1], [0.25, 0.25]]), "negative"),
    (np.full((2, 3), 1 / 6), "axes"),
    (np.array(1.0), "at least one axis"),
    (np.array([[np.nan, 0.5], [0.25, 0.25]]), "non-finite"),
    (np.full((2,) * 17, 2.0**-17), "states"),
])
def test_joint_table_rejects_bad_probs(probs, message):
  with pytest.raises(ValueError, match=message):
    oracles.JointTable(probs)


@pytest.mark.parametrize("initial, transition, length, message", [
    ([0.5, 0.5], [[0.5, 0.6], [0.5, 0.5]], 4, "rows must sum to 1"),
    ([0.5, 0.5], [[1.5, -0.5], [0.5, 0.5]], 4, "negative"),
    ([0.5, 0.5], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 4, r"shape \(2, 2\)"),
    ([1 / 3] * 3, [[0.5, 0.5], [0.5, 0.5]], 4, r"shape \(3, 3\)"),
    ([[0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]], 4, "vector"),
    ([0.7, 0.7], [[0.5, 0.5], [0.5, 0.5]], 4, "sum to 1"),
    ([0.5, 0.5], [[0.5, 0.5], [0.5, 0.5]], 0, "length"),
])
def test_markov_chain_rejects_bad_inputs(initial, transition, length, message):
  with pytest.raises(ValueError, match=message):
    oracles.MarkovChain(np.array(initial), np.array(transition), length)


def test_other_bad_inputs(table):
  with pytest.raises(ValueError, match="emission"):
    oracles.HiddenMarkovModel(np.ones(2) / 2, np.eye(2), np.ones((3, 2)) / 2, 4)
  with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
    table.logits_fn(jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(ValueError, match="integers"):
    table.logits_fn(jnp.zeros((2, 4), jnp.float32))
  with pytest.raises(ValueError, match="different positions"):
    table.pair_marginal(1, 1)
  with pytest.raises(ValueError, match="not a position"):
    table.pair_marginal(0, 4)
  with pytest.raises(ValueError, match="one prob per phrase"):
    oracles.JointTable.from_phrases([[0, 1], [1, 0]], [1.0], 2, 0.1)
  with pytest.raises(ValueError, match="vocab_size >= 2"):
    oracles.MarkovChain.sticky(1, 4, 0.5)
