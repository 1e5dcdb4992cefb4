"""FeF's flat loop of rounds (`loop.fef_round`) against the loop of steps it replaces.

Where a step's set is its block's remaining masked positions, left to right,
FeF runs one `lax.while_loop` of verification rounds instead of a loop of steps
each holding a loop of rounds, for fused exact-cache rounds that usually decide a
block (`loop.flat_rounds`). The two must make the same draws: same tokens and
same statistics, bit for bit, with gaps in the masks (the cache's refresh) and
warps, at batch > 1.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax import models
from fef_jax import samplers
from fef_jax.samplers import loop
from fef_jax.samplers import selection

VOCAB = 13
MASK_ID = VOCAB
LENGTH = 16
BLOCK_CAUSAL = models.TransformerConfig(
    vocab_size=VOCAB, mask_id=MASK_ID, max_length=LENGTH, d_model=32, num_layers=2,
    num_heads=2, mlp_dim=64, attention="block_causal", block_length=2)
STAT_NAMES = ("nfe", "sequences", "rounds", "tokens", "drafts_examined", "drafts_accepted")


@functools.lru_cache(maxsize=None)
def _denoiser(block_length: int) -> models.Denoiser:
  config = dataclasses.replace(BLOCK_CAUSAL, block_length=block_length)
  return models.Denoiser(models.Transformer(config),
                         models.init_params(config, jax.random.key(0)))


def _prompts() -> jax.Array:
  tokens = np.random.default_rng(0).integers(0, VOCAB, (5, LENGTH)).astype(np.int32)
  tokens[:, 6:] = MASK_ID
  tokens[1, 2] = MASK_ID  # a mask inside the prompt: a block of its own
  tokens[2, 8:12] = 3  # revealed tokens between masked blocks: the cache skips a block
  return jnp.asarray(tokens)


def _run(denoiser, tokens, config, flat: bool, monkeypatch):
  monkeypatch.setattr(loop, "flat_rounds", lambda *args: flat)
  # A fresh function per call: jit must trace again, with the patched choice.
  run = jax.jit(lambda t, k: loop.run(denoiser, t, k, config, samplers.PLANS["fef"]))
  result, bad_B = run(tokens, jax.random.key(3))
  return (np.asarray(result.tokens), {n: np.asarray(getattr(result.stats, n))
                                      for n in STAT_NAMES}, np.asarray(bad_B))


@pytest.mark.parametrize("span, options", [
    (2, dict(block_length=2, cache="exact", window=2)),
    (2, dict(block_length=2, cache="exact", window=2, top_k=4, temperature=0.8)),
    (2, dict(block_length=1, cache="exact", window=2)),  # two blocks per attention block
    (2, dict(steps=1, block_length=2, cache="exact", window=2)),  # one step per block too
    (1, dict(block_length=1, cache="exact", window=1)),
])
def test_flat_rounds_make_the_step_loops_draws(span, options, monkeypatch):
  config = samplers.make_config("fef", MASK_ID, **options)
  denoiser, tokens = _denoiser(span), _prompts()
  assert loop.flat_rounds(config, denoiser, LENGTH)
  flat_tokens, flat_stats, flat_bad = _run(denoiser, tokens, config, True, monkeypatch)
  step_tokens, step_stats, step_bad = _run(denoiser, tokens, config, False, monkeypatch)
  np.testing.assert_array_equal(flat_tokens, step_tokens)
  for name in STAT_NAMES:
    np.testing.assert_array_equal(flat_stats[name], step_stats[name], err_msg=name)
  np.testing.assert_array_equal(flat_bad, step_bad)
  assert not np.any(flat_tokens == MASK_ID)
  # The statistics are a run's, not zeros that trivially agree.
  assert np.all(flat_stats["rounds"] >= 1) and np.all(flat_stats["nfe"] > 1)


@pytest.mark.parametrize("options, flat", [
    (dict(cache="exact", block_length=2, window=2), True),
    (dict(cache="exact", block_length=2, window=2, steps=1), True),
    (dict(cache="exact", block_length=2, window=1), False),  # two rounds per block
    (dict(cache="exact", block_length=2, window=3), False),  # refresh calls per block
    (dict(cache="exact", block_length=2, window=2, steps=4), False),  # a plan's sets
    (dict(cache="exact", block_length=2, window=2, order="random"), False),
    (dict(cache="exact", block_length=2, window=2, mode="joint_then_remask", steps=4),
     False),
    (dict(cache="exact", block_length=2, window=2, drafter="head"), False),
    (dict(window=2), False),  # no cache: a step is cheap beside W whole copies
    (dict(cache="approximate", block_length=2, window=2), False),  # refresh calls
])
def test_flat_rounds_only_where_a_round_usually_decides_a_block_and_blocks_cost_no_call(
    options, flat):
  denoiser = _denoiser(2)
  config = samplers.make_config("fef", MASK_ID, **options)
  assert loop.flat_rounds(config, denoiser, LENGTH) == flat
  assert not loop.flat_rounds(samplers.make_config("first_hitting", MASK_ID), denoiser, LENGTH)


def test_left_to_right_rank_is_the_position_scores_rank():
  eligible_BxL = jnp.asarray(np.random.default_rng(1).random((6, LENGTH)) < 0.4)
  eligible_BxL = eligible_BxL.at[0].set(False)  # a row with nothing eligible
  position_scores_BxL = selection.scores("position", None, jnp.zeros((6, LENGTH), jnp.int32),
                                         None)
  np.testing.assert_array_equal(loop.left_to_right_rank(eligible_BxL),
                                selection.rank_by_score(position_scores_BxL, eligible_BxL))
