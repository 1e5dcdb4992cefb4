"""FeF with `cache="prefix"`: one drafted state and one attention block per copy.

The targets equal the whole copies' full passes (float32 round-off); the draws
follow the denoiser's prefix factorization in the chosen order (chi-square against
the law enumerated from `posterior.joint_log_prob`, marked `slow`), also where the
order steps back to earlier blocks and rounds are cut short, and the same test
rejects rounds that are not cut short there.
"""
import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import models
from fef_jax import posterior
from fef_jax import warp
from fef_jax.samplers import selection
from fef_jax.samplers import shared_prefix
from tests import roundoff

CONFIG = models.TransformerConfig(vocab_size=7, mask_id=7, max_length=12, d_model=32,
                                  num_layers=2, num_heads=2, mlp_dim=64,
                                  attention="block_causal", block_length=2)


@functools.lru_cache(maxsize=None)
def _denoiser(config=CONFIG):
  return models.Denoiser(models.Transformer(config), models.init_params(config, jax.random.key(0)))


@functools.lru_cache(maxsize=None)
def _oracle():
  """A joint over V=3, L=6 seen block-causally in blocks of 2 (phrases plus smoothing)."""
  table = fj.oracles.JointTable.from_phrases(
      phrases=[[0, 0, 1, 1, 2, 2], [1, 2, 2, 0, 0, 1], [2, 1, 0, 2, 1, 0]],
      probs=[0.5, 0.3, 0.2], vocab_size=3, smoothing=0.03)
  return fj.oracles.BlockCausal(table, 2)


def test_parity_order_puts_even_positions_first_each_half_left_to_right():
  for length in range(1, 12):
    want = sorted(range(length), key=lambda p: (p % 2, p))
    got = np.asarray(selection.parity_order(length))
    np.testing.assert_array_equal(np.argsort(got), want)
    np.testing.assert_array_equal(np.sort(got), np.arange(length))


def test_forward_prefix_stops_where_the_blocks_step_back():
  positions = jnp.asarray([[0, 2, 3, 6, 4, 8], [5, 1, 7, 9, 10, 11], [4, 5, 5, 6, 7, 0]])
  want = [[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
  np.testing.assert_array_equal(shared_prefix.forward_prefix(positions, 2), np.asarray(want, bool))


def test_copy_block_logits_equal_the_full_pass_of_each_copy_at_its_own_span():
  denoiser = _denoiser()
  rng = np.random.default_rng(1)
  batch, copies, length = 3, 4, CONFIG.max_length
  tokens = jnp.asarray(rng.integers(0, 8, (batch, length)), jnp.int32)  # masks included
  span = jnp.asarray(rng.integers(0, 8, (batch, copies, 2)), jnp.int32)
  start = jnp.asarray(2 * rng.integers(0, length // 2, (batch, copies)), jnp.int32)
  _, cache = jax.jit(denoiser.encode)(tokens)
  got = jax.jit(denoiser.copy_block_logits)(cache, span, start)
  assert got.shape == (batch, copies, 2, CONFIG.vocab_size)
  full = np.asarray(tokens)[:, None].repeat(copies, axis=1)
  for b, c in itertools.product(range(batch), range(copies)):
    full[b, c, start[b, c]:start[b, c] + 2] = span[b, c]
  want = np.asarray(jax.jit(denoiser)(jnp.asarray(full.reshape(-1, length))))
  want = want.reshape(batch, copies, length, -1)
  want = np.stack([[want[b, c, start[b, c]:start[b, c] + 2] for c in range(copies)]
                   for b in range(batch)])
  bound = roundoff.two_pass_bound(roundoff.fef_chain(CONFIG, length), want)
  roundoff.assert_within(got, want, bound, "copy spans")
  with pytest.raises(ValueError, match="start_BxC"):
    denoiser.copy_block_logits(cache, span, start[:, :2])


@pytest.mark.parametrize("features", [False, True])
def test_each_copys_target_equals_the_full_pass_of_that_copy(features):
  denoiser = _denoiser()
  rng = np.random.default_rng(0)
  batch, length, window = 3, CONFIG.max_length, 4
  tokens = np.full((batch, length), CONFIG.mask_id)
  tokens[:, :2] = rng.integers(0, 7, (batch, 2))
  drafts = np.where(tokens == CONFIG.mask_id, rng.integers(0, 7, (batch, length)), tokens)
  # Targets that move forward through the row, some two to a block (every target of
  # a round the evaluator is asked to verify; `forward_prefix` holds for each row).
  positions = np.asarray([[2, 4, 5, 9], [3, 6, 8, 11], [2, 3, 10, 11]])
  rank = np.full((batch, length), length)
  for b in range(batch):
    rank[b, positions[b]] = np.arange(window)
  copies = posterior.prefix_revealed_copies(
      jnp.asarray(tokens, jnp.int32), jnp.asarray(drafts, jnp.int32), jnp.asarray(rank),
      jnp.zeros(batch, jnp.int32), window)
  revealed = np.where(rank < window, drafts, tokens)
  evaluate = shared_prefix.evaluator(denoiser, length, features=features).evaluate
  span, offset, _ = jax.jit(evaluate)(copies, jnp.asarray(revealed, jnp.int32),
                                       jnp.asarray(positions, jnp.int32), None)
  assert span.shape[:3] == (batch, window, length)
  np.testing.assert_array_equal(offset, 0)
  full = jax.jit(denoiser.features if features else denoiser)(copies.reshape(-1, length))
  full = np.asarray(full).reshape(batch, window, length, -1)
  got = np.take_along_axis(np.asarray(span), positions[:, :, None, None], axis=2)[:, :, 0]
  want = np.take_along_axis(full, positions[:, :, None, None], axis=2)[:, :, 0]
  bound = roundoff.two_pass_bound(roundoff.fef_chain(CONFIG, length), want)
  roundoff.assert_within(got, want, bound, "targets")
  # Outside a copy's target block the span is the drafted state's pass.
  drafted = np.asarray(jax.jit(denoiser.features if features else denoiser)(
      jnp.asarray(revealed, jnp.int32)))
  outside = np.arange(length)[None, None, :] // 2 != positions[:, :, None] // 2
  np.testing.assert_allclose(np.where(outside[..., None], np.asarray(span), 0),
                             np.where(outside[..., None], drafted[:, None], 0), rtol=0, atol=0)


def _prompts():
  tokens = np.full((4, CONFIG.max_length), CONFIG.mask_id, np.int32)
  tokens[:, :4] = np.random.default_rng(2).integers(0, 7, (4, 4))
  tokens[1, 6] = 3  # a prompt token inside the answer
  tokens[3, :4] = CONFIG.mask_id  # no prompt at all
  return jnp.asarray(tokens)


@pytest.mark.parametrize("options", [dict(order="parity", window=4),
                                     dict(order="dilated", window=3, block_length=4),
                                     dict(order="random", window=2, steps=2, top_k=3)])
def test_counts_prompts_and_calls(options):
  tokens = _prompts()
  result = fj.sample(_denoiser(), tokens, jax.random.key(1), "fef", mask_id=CONFIG.mask_id,
                     cache="prefix", **options)
  out, given = np.asarray(result.tokens), np.asarray(tokens)
  prompt = given != CONFIG.mask_id
  np.testing.assert_array_equal(out[prompt], given[prompt])
  assert np.all((out >= 0) & (out < CONFIG.vocab_size))
  stats = result.stats
  np.testing.assert_array_equal(stats.tokens, (~prompt).sum(1))
  rounds = np.asarray(stats.rounds)
  np.testing.assert_array_equal(stats.nfe, 1 + rounds)
  # The first call; per round the drafted state (L positions) and a block of 2 per copy.
  length, window = CONFIG.max_length, options["window"]
  np.testing.assert_array_equal(stats.sequences,
                                np.ceil(1 + rounds * (length + 2 * window) / length))


def test_jit_eager_and_rows_agree():
  oracle = _oracle()
  tokens = jnp.full((3, 6), oracle.mask_id, jnp.int32).at[2, :2].set(1)
  run = functools.partial(fj.sample, oracle, key=jax.random.key(4), method="fef",
                          mask_id=oracle.mask_id, order="parity", window=3, cache="prefix")
  jitted = run(tokens_BxL=tokens)
  with jax.disable_jit():
    eager = run(tokens_BxL=tokens)
  np.testing.assert_array_equal(jitted.tokens, eager.tokens)
  np.testing.assert_array_equal(jitted.stats.sequences, eager.stats.sequences)
  other = run(tokens_BxL=tokens.at[1:, 5].set(2))
  np.testing.assert_array_equal(other.tokens[0], jitted.tokens[0])
  np.testing.assert_array_equal(other.stats.nfe[0], jitted.stats.nfe[0])


@pytest.mark.parametrize("denoiser,options,error,message", [
    ("plain", {}, TypeError, "block-local"),
    ("bidirectional", {}, TypeError, "block-causal"),
    ("odd_length", {}, ValueError, "multiple"),
    ("oracle", dict(drafter="head"), ValueError, "drafter='head'"),
    ("oracle", dict(verifier="head"), ValueError, "verifier='head' takes no cache"),
])
def test_bad_prefix_requests_raise(denoiser, options, error, message):
  oracle = _oracle()
  tokens = jnp.full((2, 6), oracle.mask_id, jnp.int32)
  mask_id = oracle.mask_id
  if denoiser in ("bidirectional", "odd_length"):
    config = dataclasses.replace(CONFIG, attention="bidirectional", block_length=None)
    length = CONFIG.max_length
    if denoiser == "odd_length":
      config, length = CONFIG, 11
    logits_fn, mask_id = _denoiser(config), CONFIG.mask_id
    tokens = jnp.full((2, length), mask_id, jnp.int32)
  else:
    logits_fn = {"plain": oracle.oracle.logits_fn, "oracle": oracle}[denoiser]
  with pytest.raises(error, match=message):
    fj.sample(logits_fn, tokens, jax.random.key(0), "fef", mask_id=mask_id, cache="prefix",
              **options)


NUM_SAMPLES = 20_000
ALPHA = 1e-3


def _prefix_law(oracle, order):
  """The oracle's prefix factorization over whole rows in `order`: probs[V] * L."""
  length, vocab = 6, oracle.oracle.vocab_size
  values = jnp.asarray(list(itertools.product(range(vocab), repeat=length)), jnp.int32)
  scores = selection.scores(order, None, values, jnp.zeros(values.shape))
  rank = selection.rank_by_score(scores, jnp.ones(values.shape, bool))
  log_p = posterior.joint_log_prob(
      oracle, jnp.full(values.shape, oracle.mask_id, jnp.int32), values, rank,
      functools.partial(warp.warp_log_probs, mask_id=oracle.mask_id))
  probs = np.exp(np.asarray(log_p, np.float64))
  assert math.isclose(probs.sum(), 1.0, rel_tol=1e-4)
  return (probs / probs.sum()).reshape((vocab,) * length)


def _gof(samples, probs):
  empirical = fj.stats.empirical_distribution(np.asarray(samples), probs.shape[0])
  counts = np.round(empirical * samples.shape[0]).reshape(-1)
  _, _, p_value = fj.stats.chi_square_gof(counts, probs.reshape(-1))
  return p_value, fj.stats.total_variation(empirical, probs)


@pytest.mark.slow
@pytest.mark.parametrize("order,window", [("parity", 3), ("dilated", 3), ("parity", 6)])
def test_prefix_rounds_draw_the_prefix_factorization_exactly(order, window):
  # Blocks of 2 over 6 positions: the parity order steps back once (from position 4 to
  # 1), the dilated one (0, 4, 2, 1, 5, 3) three times, where rounds are cut short.
  oracle = _oracle()
  probs = _prefix_law(oracle, order)
  floor = fj.stats.expected_tv_noise_floor(probs, NUM_SAMPLES)
  # Later blocks revealed before earlier positions are invisible to those: the law is
  # not the table's joint, and this sample size tells them apart.
  assert fj.stats.total_variation(probs, np.asarray(oracle.oracle.probs)) > 2 * floor
  tokens = jnp.full((NUM_SAMPLES, 6), oracle.mask_id, jnp.int32)
  result = fj.sample(oracle, tokens, jax.random.key(31), "fef", mask_id=oracle.mask_id,
                     order=order, window=window, cache="prefix")
  p_value, tv = _gof(result.tokens, probs)
  assert p_value > ALPHA, (p_value, tv)
  assert tv < 3 * floor, (tv, floor)
  assert float(result.stats.tokens_per_round.mean()) > 1.2


@pytest.mark.slow
def test_rounds_not_cut_where_the_order_steps_back_are_rejected(monkeypatch):
  # The test above can fail: verifying every target against the drafted state, also
  # after the order steps back to an earlier block, reveals later drafts to earlier
  # targets, and the same test rejects the draws.
  monkeypatch.setattr(shared_prefix, "forward_prefix",
                      lambda positions_BxW, span: jnp.ones(positions_BxW.shape, bool))
  oracle = _oracle()
  probs = _prefix_law(oracle, "dilated")
  tokens = jnp.full((NUM_SAMPLES, 6), oracle.mask_id, jnp.int32)
  # The sampler compiled for these shapes is traced anew with the mutation, and the
  # mutated program is dropped before any later test could reuse it.
  jax.clear_caches()
  try:
    result = fj.sample(oracle, tokens, jax.random.key(31), "fef", mask_id=oracle.mask_id,
                       order="dilated", window=3, cache="prefix")
  finally:
    jax.clear_caches()
  p_value, tv = _gof(result.tokens, probs)
  assert p_value < ALPHA, (p_value, tv)
