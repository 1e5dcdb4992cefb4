"""Exactness against oracles: FeF deciding the whole sequence in one step reproduces the
joint; one-step parallel (product-of-marginals) sampling does not.

Each test draws N = 10^5 samples with a fixed seed and applies Pearson's chi-square
goodness-of-fit test (cells with expected count < 5 pooled). An exact sampler gives
a uniform p-value, so the 1e-3 threshold fails an exact sampler with probability
1e-3; a sampler whose output differs by a total variation of ~0.01 gives p << 1e-12
at this N, which is the level demanded of the inexact baseline.
"""
import jax
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import stats
from tests.helpers import all_masked, phrase_table, table_gof

NUM_SAMPLES = 100_000
ALPHA = 1e-3
PAIRS = [(0, 1), (7, 8), (15, 16), (30, 31), (0, 2), (3, 19), (0, 31)]

pytestmark = pytest.mark.slow


def _sample(oracle, method, seed, **options):
  tokens = all_masked(NUM_SAMPLES, oracle.length, oracle.mask_id)
  return fj.sample(oracle.logits_fn, tokens, jax.random.key(seed), method,
                   mask_id=oracle.mask_id, **options)


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("order", ["left_to_right", "confidence", "random", "dilated"])
def test_fef_decides_the_whole_sequence_in_one_step_exactly(order, window):
  table = phrase_table()
  result = _sample(table, "fef", seed=12, order=order, window=window, steps=1)
  p_value, tv = table_gof(table, result.tokens)
  assert p_value > ALPHA, (p_value, tv)
  assert tv < 3 * stats.expected_tv_noise_floor(np.asarray(table.probs), NUM_SAMPLES)
  np.testing.assert_array_equal(result.stats.rounds <= table.length, True)


@pytest.mark.parametrize("method,options", [
    ("fef", dict(mode="joint_then_remask", steps=2, window=2)),
    ("fef", dict(steps=2, block_length=3, window=2, select="random")),
    ("first_hitting", {}),
    ("first_hitting", dict(select="position")),
    ("first_hitting", dict(select="dilated")),
])
def test_other_exact_samplers_match_the_joint(method, options):
  table = phrase_table()
  p_value, tv = table_gof(table, _sample(table, method, seed=12, **options).tokens)
  assert p_value > ALPHA, (p_value, tv)


@pytest.mark.parametrize("method", ["ancestral", "confidence", "random_sizes"])
def test_one_step_parallel_sampling_is_rejected_decisively(method):
  table = phrase_table()
  p_value, tv = table_gof(table, _sample(table, method, seed=13, steps=1).tokens)
  assert p_value < 1e-12 and tv > 0.3, (p_value, tv)


def test_fef_matches_a_long_markov_chain_on_pair_statistics():
  chain = fj.oracles.MarkovChain.sticky(vocab_size=3, length=32, stay_prob=0.85)
  result = _sample(chain, "fef", seed=14, window=8, order="random", steps=1)
  p_values = [p for *_, p in stats.pair_gof(np.asarray(result.tokens), chain, PAIRS)]
  assert stats.bonferroni(p_values) > ALPHA, p_values
  # Sticky chains accept most drafts: far fewer rounds than tokens.
  assert float(result.stats.tokens_per_round.mean()) > 2.0


def test_one_step_ancestral_sampling_breaks_the_chain():
  chain = fj.oracles.MarkovChain.sticky(vocab_size=3, length=32, stay_prob=0.85)
  result = _sample(chain, "ancestral", seed=15, steps=1)
  p_values = [p for *_, p in stats.pair_gof(np.asarray(result.tokens), chain, PAIRS[:3])]
  assert max(p_values) < 1e-12, p_values


def _warped_left_to_right_joint(probs, temperature, top_k):
  """prod_j warp(p(x_j | x_<j)) for every sequence, from the table by direct summation."""
  vocab, length = probs.shape[0], probs.ndim
  out = np.ones(probs.shape)
  for state in np.ndindex(*probs.shape):
    for j in range(length):
      prefix = probs[state[:j]] if j else probs
      conditional = prefix.reshape(vocab, -1).sum(axis=1)
      conditional = conditional / conditional.sum()
      logits = np.log(np.maximum(conditional, 1e-300)) / temperature
      # Tokens tied with the k-th largest are kept, as in fef_jax.warp.
      logits[logits < np.sort(logits)[-top_k] - 1e-9] = -np.inf
      warped = np.exp(logits - logits.max())
      out[state] *= (warped / warped.sum())[state[j]]
  return out


def test_fef_with_temperature_and_top_k_matches_the_warped_factorization():
  # With a warp, the target of each factor is the warped conditional, so FeF
  # must reproduce prod_j warp(p(x_j | x_<j)) in its order (left to right here).
  table = phrase_table()
  expected = _warped_left_to_right_joint(np.asarray(table.probs, np.float64), 0.7, 2)
  result = _sample(table, "fef", seed=16, temperature=0.7, top_k=2, window=3, steps=1)
  empirical = stats.empirical_distribution(np.asarray(result.tokens), table.vocab_size)
  counts = np.round(empirical * NUM_SAMPLES).reshape(-1)
  _, _, p_value = stats.chi_square_gof(counts, expected.reshape(-1))
  assert p_value > ALPHA, p_value
  _, _, p_unwarped = stats.chi_square_gof(counts, np.asarray(table.probs).reshape(-1))
  assert p_unwarped < 1e-12  # the warp is visible: this is not the plain joint
