"""Block-causal attention, cached block-local evaluation, and FeF's exact cache.

The cache is exact for a block-causal model: `block_logits` over a cached state
equals the full forward pass of every copy (float32 round-off), so FeF with
`cache="exact"` makes the uncached sampler's decisions, at a fraction of the cost
per round. On an oracle seen block-causally, FeF with the cache reproduces the
joint (chi-square at alpha = 1e-3, marked `slow`).
"""
import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import models
from fef_jax import speculative
from fef_jax.samplers import cache
from fef_jax.train import optim
from fef_jax.train import run
from fef_jax.train import step as train_lib
from tests import roundoff
from tests.helpers import table_gof

VOCAB = 11
MASK_ID = VOCAB
PAD_ID = 0
LENGTH = 16
SPAN = 4
BIDIRECTIONAL = models.TransformerConfig(
    vocab_size=VOCAB, mask_id=MASK_ID, max_length=LENGTH, d_model=32, num_layers=2,
    num_heads=4, mlp_dim=64)
BLOCK_CAUSAL = dataclasses.replace(BIDIRECTIONAL, attention="block_causal",
                                   block_length=SPAN)


@functools.lru_cache(maxsize=None)
def _params():
  return models.init_params(BIDIRECTIONAL, jax.random.key(0))


_apply = jax.jit(lambda config, method, params, *args: models.Transformer(config).apply(
    {"params": params}, *args, method=method), static_argnums=(0, 1))


def _call(config, method, *args):
  return _apply(config, method, _params(), *args)


def _tokens_and_valid(seed, batch=3):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (batch, LENGTH))
  tokens[rng.random((batch, LENGTH)) < 0.4] = MASK_ID
  lengths = np.array([LENGTH, 13, 7, 16, 10][:batch])  # padding inside blocks too
  valid = np.arange(LENGTH)[None, :] < lengths[:, None]
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)


def _copies_and_reference(config, tokens, valid, start_B, copies, seed):
  """Random span tokens for `copies` copies and the full pass of each copy, at its span."""
  batch = tokens.shape[0]
  span_BxCxS = jnp.asarray(np.random.default_rng(seed).integers(
      0, VOCAB + 1, (batch, copies, SPAN)), jnp.int32)
  rows = []
  for b in range(batch):
    start = int(start_B[b])
    full_CxL = jnp.broadcast_to(tokens[b], (copies, LENGTH)).at[:, start:start + SPAN].set(
        span_BxCxS[b])
    logits_CxLxV = _call(config, "__call__", full_CxL, jnp.broadcast_to(
        valid[b], (copies, LENGTH)))
    rows.append(logits_CxLxV[:, start:start + SPAN])
  return span_BxCxS, jnp.stack(rows)


def _span_valid(valid, start_B):
  return np.stack([np.asarray(valid[b, s:s + SPAN]) for b, s in enumerate(start_B)])


def test_encode_returns_the_full_pass_and_every_layers_keys_and_values():
  tokens, valid = _tokens_and_valid(0)
  logits, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  full = _call(BLOCK_CAUSAL, "__call__", tokens, valid)
  # Two programs (encode also returns the keys and values, which changes XLA's fusion):
  # the same pass up to round-off.
  np.testing.assert_allclose(
      logits, full, rtol=0,
      atol=roundoff.two_pass_bound(roundoff.fef_chain(BLOCK_CAUSAL, LENGTH), full))
  heads, head_dim = BLOCK_CAUSAL.num_heads, BLOCK_CAUSAL.head_dim
  assert cache.keys_NxYxLxHxK.shape == (3, 2, LENGTH, heads, head_dim)
  assert cache.values_NxYxLxHxK.shape == cache.keys_NxYxLxHxK.shape
  np.testing.assert_array_equal(cache.valid_NxL, valid)
  _, no_padding = _call(BLOCK_CAUSAL, "encode", tokens, None)
  assert bool(jnp.all(no_padding.valid_NxL))


def test_block_causal_blocks_do_not_see_later_blocks():
  tokens, valid = _tokens_and_valid(1)
  changed = tokens.at[:, 2 * SPAN:].set(MASK_ID)
  assert not np.array_equal(tokens, changed)
  logits, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  logits_c, cache_c = _call(BLOCK_CAUSAL, "encode", changed, valid)
  early = slice(0, 2 * SPAN)
  np.testing.assert_array_equal(logits[:, early], logits_c[:, early])
  np.testing.assert_array_equal(cache.keys_NxYxLxHxK[:, :, early],
                                cache_c.keys_NxYxLxHxK[:, :, early])
  np.testing.assert_array_equal(cache.values_NxYxLxHxK[:, :, early],
                                cache_c.values_NxYxLxHxK[:, :, early])
  # ... while a block does see the positions of its own block.
  inside = tokens.at[:, 1].set((tokens[:, 1] + 1) % VOCAB)
  assert np.abs(_call(BLOCK_CAUSAL, "__call__", inside, valid)[:2, 0]
                - logits[:2, 0]).max() > 1e-4


@pytest.mark.parametrize("starts", [(0, 0, 0), (4, 4, 4), (12, 8, 4), (8, 12, 0)])
def test_block_logits_equal_the_full_pass_of_every_copy_when_block_causal(starts):
  tokens, valid = _tokens_and_valid(2)
  start_B = jnp.asarray(starts, jnp.int32)
  _, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  span, reference = _copies_and_reference(BLOCK_CAUSAL, tokens, valid, start_B, 3, seed=3)
  got = _call(BLOCK_CAUSAL, "block_logits", cache, span, start_B)
  assert got.shape == (3, 3, SPAN, VOCAB) and got.dtype == jnp.float32
  span_valid = _span_valid(valid, starts)[:, None, :, None]
  error = np.where(span_valid, np.abs(np.asarray(got) - np.asarray(reference)), 0.0)
  # The cached block pass and the full pass are different programs: two passes' round-off.
  bound = roundoff.two_pass_bound(roundoff.fef_chain(BLOCK_CAUSAL, LENGTH), reference)
  assert error.max() <= bound, (error.max(), bound)


def test_block_hidden_gives_the_full_pass_hidden_states_and_logits_at_the_span():
  # What a speculative head reads over the exact cache (drafter="head", cache="exact").
  tokens, valid = _tokens_and_valid(4)
  start_B = jnp.asarray([8, 0, 4], jnp.int32)
  _, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  span, _ = _copies_and_reference(BLOCK_CAUSAL, tokens, valid, start_B, 2, seed=5)
  logits, hidden = _call(BLOCK_CAUSAL, "block_hidden", cache, span, start_B)
  assert hidden.shape == (3, 2, SPAN, BLOCK_CAUSAL.d_model)
  chain = roundoff.fef_chain(BLOCK_CAUSAL, LENGTH)
  block = _call(BLOCK_CAUSAL, "block_logits", cache, span, start_B)
  span_valid = _span_valid(valid, start_B)[:, None, :, None]
  roundoff.assert_within(np.where(span_valid, logits, 0), np.where(span_valid, block, 0),
                         roundoff.two_pass_bound(chain, block), "block_logits")
  for b, start in enumerate(np.asarray(start_B)):
    copies = jnp.broadcast_to(tokens[b], (2, LENGTH)).at[:, start:start + SPAN].set(span[b])
    full_logits, full_hidden = _call(BLOCK_CAUSAL, "hidden", copies,
                                     jnp.broadcast_to(valid[b], (2, LENGTH)))
    where = np.asarray(valid[b, start:start + SPAN])[None, :, None]
    for got, want, name in ((hidden[b], full_hidden, "hidden"), (logits[b], full_logits,
                                                                 "logits")):
      want = want[:, start:start + SPAN]
      roundoff.assert_within(np.where(where, got, 0), np.where(where, want, 0),
                             roundoff.two_pass_bound(chain, want), f"{name}, row {b}")


def test_extend_writes_the_full_pass_keys_and_values_of_copy_zero():
  # What moves the exact cache to the next window: after `extend` over [4, 12) the cache
  # equals the encoding of the state with that span replaced by copy 0, before 12
  # (block-causal keys and values of a block depend on blocks up to it only).
  tokens, valid = _tokens_and_valid(6)
  start_B = jnp.asarray([4, 4, 0], jnp.int32)
  _, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  span = jnp.asarray(np.random.default_rng(7).integers(0, VOCAB + 1, (3, 2, 2 * SPAN)),
                     jnp.int32)
  logits, extended = _call(BLOCK_CAUSAL, "extend", cache, span, start_B)
  chain = roundoff.fef_chain(BLOCK_CAUSAL, LENGTH)
  block = _call(BLOCK_CAUSAL, "block_logits", cache, span, start_B)
  span_valid = np.stack([np.asarray(valid[b, s:s + 2 * SPAN]) for b, s in enumerate(start_B)])
  where = span_valid[:, None, :, None]
  roundoff.assert_within(np.where(where, logits, 0), np.where(where, block, 0),
                         roundoff.two_pass_bound(chain, block), "logits")
  np.testing.assert_array_equal(extended.valid_NxL, cache.valid_NxL)
  for b, start in enumerate(np.asarray(start_B)):
    state = tokens[b].at[start:start + 2 * SPAN].set(span[b, 0])
    _, want = _call(BLOCK_CAUSAL, "encode", state[None], valid[b][None])
    end = start + 2 * SPAN
    for name in ("keys_NxYxLxHxK", "values_NxYxLxHxK"):
      got_BxL, want_BxL = getattr(extended, name)[b, :, :end], getattr(want, name)[0, :, :end]
      where = np.asarray(valid[b, :end])[None, :, None, None]
      roundoff.assert_within(np.where(where, got_BxL, 0), np.where(where, want_BxL, 0),
                             roundoff.two_pass_bound(chain, want_BxL), f"{name}, row {b}")
    # Positions after the span keep the old cache's entries.
    np.testing.assert_array_equal(extended.keys_NxYxLxHxK[b, :, end:],
                                  cache.keys_NxYxLxHxK[b, :, end:])


@pytest.mark.parametrize("tail_copy", [None, 0, 2])
@pytest.mark.parametrize("layout", ["shared_before", "shared_after"])
def test_extend_shared_equals_the_full_pass_of_every_copy(layout, tail_copy):
  # A fused FeF round: the copies share the decided block before their window (or, at
  # the sequence's start, a later block none of them sees), computed once; with a tail,
  # the block after their window too, as one copy sees it.
  tail = tail_copy is not None
  tokens, valid = _tokens_and_valid(3)
  rng = np.random.default_rng(11)
  length_t = SPAN if tail else 2 * SPAN
  shared = jnp.asarray(rng.integers(0, VOCAB + 1, (3, SPAN)), jnp.int32)
  copies = jnp.asarray(rng.integers(0, VOCAB + 1, (3, 3, length_t)), jnp.int32)
  tail_tokens = jnp.asarray(rng.integers(0, VOCAB + 1, (3, SPAN)), jnp.int32)
  if layout == "shared_before":
    shared_start, start = np.array([0, 4, 4]), np.array([4, 8, 8])
  else:
    shared_start, start = np.array([8, 8, 12]), np.array([0, 0, 4])
  tail_start = start + length_t
  _, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  tail_args = (tail_tokens, jnp.asarray(tail_start, jnp.int32), tail_copy) if tail else ()
  logits, tail_logits, extended = jax.jit(
      lambda *args: models.Transformer(BLOCK_CAUSAL).apply(
          {"params": _params()}, *args, *tail_args, method="extend_shared"))(
              cache, shared, copies, jnp.asarray(shared_start, jnp.int32),
              jnp.asarray(start, jnp.int32))
  assert logits.shape == (3, 3, length_t, VOCAB)
  assert (tail_logits is None) == (not tail)
  chain = roundoff.fef_chain(BLOCK_CAUSAL, LENGTH)
  for b in range(3):
    base = tokens[b].at[shared_start[b]:shared_start[b] + SPAN].set(shared[b])
    if tail:
      base = base.at[tail_start[b]:tail_start[b] + SPAN].set(tail_tokens[b])
    span = slice(start[b], start[b] + length_t)
    where = np.asarray(valid[b, span])[:, None]
    for c in range(3):
      want, want_cache = _call(BLOCK_CAUSAL, "encode", base.at[span].set(copies[b, c])[None],
                               valid[b][None])
      roundoff.assert_within(np.where(where, logits[b, c], 0), np.where(where, want[0, span], 0),
                             roundoff.two_pass_bound(chain, want[0, span]), f"row {b}, copy {c}")
      if c == tail_copy:
        tail_span = slice(tail_start[b], tail_start[b] + SPAN)
        tail_where = np.asarray(valid[b, tail_span])[:, None]
        roundoff.assert_within(np.where(tail_where, tail_logits[b], 0),
                               np.where(tail_where, want[0, tail_span], 0),
                               roundoff.two_pass_bound(chain, want[0, tail_span]),
                               f"tail of row {b}")
      if c:
        continue
      # The cache holds copy 0's state wherever it was written or is still valid, but
      # the tail is not written: its keys and values are one copy's. Shared positions
      # after a tail (a later block, which a fused round never reads) do not see it.
      written_L = np.zeros(LENGTH, bool)
      written_L[shared_start[b]:shared_start[b] + SPAN] = True
      written_L[span] = True
      end = start[b] + length_t if tail and layout == "shared_after" else max(
          start[b] + length_t, shared_start[b] + SPAN)
      for name in ("keys_NxYxLxHxK", "values_NxYxLxHxK"):
        got_L, want_L = getattr(extended, name)[b, :, :end], getattr(want_cache, name)[0, :, :end]
        exact = np.asarray(valid[b, :end])[None, :, None, None]
        roundoff.assert_within(np.where(exact, got_L, 0), np.where(exact, want_L, 0),
                               roundoff.two_pass_bound(chain, want_L), f"{name}, row {b}")
        np.testing.assert_array_equal(getattr(extended, name)[b, :, ~written_L],
                                      getattr(cache, name)[b, :, ~written_L])


def test_without_projection_every_pass_gives_the_hidden_states_its_logits_come_from():
  # What the samplers carry and project row by row (fef_jax.speculative.output_projection).
  tokens, valid = _tokens_and_valid(6)
  start_B = jnp.asarray([4, 8, 4], jnp.int32)
  span, _ = _copies_and_reference(BLOCK_CAUSAL, tokens, valid, start_B, 2, seed=7)
  _, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  rng = np.random.default_rng(8)
  shared, tail = (jnp.asarray(rng.integers(0, VOCAB, (3, SPAN)), jnp.int32) for _ in range(2))

  def run(name, project, *args, **kwargs):
    return jax.jit(functools.partial(models.Transformer(BLOCK_CAUSAL).apply,
                                     {"params": _params()}, method=name, project=project,
                                     **kwargs))(*args)

  calls = {
      "encode": lambda project: run("encode", project, tokens, valid)[0],
      "block_logits": lambda project: run("block_logits", project, cache, span, start_B),
      "extend": lambda project: run("extend", project, cache, span, start_B)[0],
      # The block before the window shared, and the block after it as copy 1 sees it.
      "extend_shared": lambda project: run(
          "extend_shared", project, cache, shared, span, start_B - SPAN, start_B,
          tail_BxR=tail, tail_start_B=start_B + SPAN, tail_copy=1)[:2],
  }
  chain = roundoff.fef_chain(BLOCK_CAUSAL, LENGTH)
  for name, call in calls.items():
    logits, hidden = call(True), call(False)
    for got, want in zip(jax.tree.leaves(hidden), jax.tree.leaves(logits)):
      assert got.shape == want.shape[:-1] + (BLOCK_CAUSAL.d_model,), name
      projected = _call(BLOCK_CAUSAL, "project_hidden", got)
      # The same pass; only the projection is a separate program.
      roundoff.assert_within(projected, want, roundoff.two_pass_bound(chain, want), name)


@pytest.mark.parametrize("tail_start, tail_copy, message", [
    (None, 0, "needs tail_start_B"), (jnp.full(2, 8, jnp.int32), 2, "tail_copy must be"),
    (jnp.full(2, 8, jnp.int32), -1, "tail_copy must be"),
    (jnp.full(3, 8, jnp.int32), 0, "the tail .* start_N must be")])
def test_extend_shared_refuses_a_bad_tail(tail_start, tail_copy, message):
  tokens, valid = _tokens_and_valid(2, batch=2)
  _, cache = _call(BLOCK_CAUSAL, "encode", tokens, valid)
  with pytest.raises(ValueError, match=message):
    models.Transformer(BLOCK_CAUSAL).apply(
        {"params": _params()}, cache, jnp.zeros((2, SPAN), jnp.int32),
        jnp.zeros((2, 2, SPAN), jnp.int32), jnp.zeros(2, jnp.int32),
        jnp.full(2, SPAN, jnp.int32), jnp.zeros((2, SPAN), jnp.int32), tail_start, tail_copy,
        method="extend_shared")


def test_extend_shared_refuses_a_bidirectional_model():
  tokens, valid = _tokens_and_valid(2)
  _, cache = _call(BIDIRECTIONAL, "encode", tokens, valid)
  with pytest.raises(ValueError, match="block-causal"):
    _call(BIDIRECTIONAL, "extend_shared", cache, jnp.zeros((2, SPAN), jnp.int32),
          jnp.zeros((2, 2, SPAN), jnp.int32), jnp.zeros(2, jnp.int32),
          jnp.full(2, SPAN, jnp.int32))


def test_config_checks_and_backward_compatible_repr():
  with pytest.raises(ValueError, match="attention"):
    dataclasses.replace(BIDIRECTIONAL, attention="causal")
  with pytest.raises(ValueError, match="block_length"):
    dataclasses.replace(BIDIRECTIONAL, attention="block_causal")
  with pytest.raises(ValueError, match="block_length"):
    dataclasses.replace(BIDIRECTIONAL, block_length=4)
  # Checkpoint fingerprints hold the repr: bidirectional configs print as before.
  assert "attention" not in repr(BIDIRECTIONAL)
  assert "attention='block_causal', block_length=4" in repr(BLOCK_CAUSAL)
  timed = dataclasses.replace(BLOCK_CAUSAL, time_conditioning=True)
  timed_params = models.init_params(timed, jax.random.key(0))
  with pytest.raises(ValueError, match="time_conditioning"):
    models.Denoiser(models.Transformer(timed), timed_params).encode(
        jnp.zeros((1, LENGTH), jnp.int32))
  assert not models.Denoiser(models.Transformer(timed), timed_params).exact_cache


@dataclasses.dataclass(frozen=True, eq=False)
class _NeverPad:
  """A denoiser that never proposes the pad token (so `valid_fn` stays put while sampling)."""
  denoiser: models.Denoiser

  exact_cache = True
  block_length = SPAN

  def _hide_pad(self, logits):
    return logits.at[..., PAD_ID].set(-jnp.inf)

  def __call__(self, tokens_NxL):
    return self._hide_pad(self.denoiser(tokens_NxL))

  def encode(self, tokens_NxL):
    logits, cache = self.denoiser.encode(tokens_NxL)
    return self._hide_pad(logits), cache

  def block_logits(self, cache, tokens_NxCxS, start_N):
    return self._hide_pad(self.denoiser.block_logits(cache, tokens_NxCxS, start_N))

  def extend(self, cache, tokens_NxCxS, start_N):
    logits, cache = self.denoiser.extend(cache, tokens_NxCxS, start_N)
    return self._hide_pad(logits), cache


@functools.lru_cache(maxsize=None)
def _sampler_denoiser():
  return _NeverPad(models.Denoiser(models.Transformer(BLOCK_CAUSAL), _params(),
                                   valid_fn=lambda x: x != PAD_ID))


def _prompts(batch, gap=False):
  """One prompt block per row; rows of odd index end with a block of padding. With
  `gap`, every row's third attention block is revealed too (an infilling prompt), so
  the window jumps from the second block to the fourth."""
  rng = np.random.default_rng(5)
  tokens = np.full((batch, LENGTH), MASK_ID)
  tokens[:, :SPAN] = rng.integers(1, VOCAB, (batch, SPAN))
  if gap:
    tokens[:, 2 * SPAN:3 * SPAN] = rng.integers(1, VOCAB, (batch, SPAN))
  else:
    tokens[1::2, -SPAN:] = PAD_ID
  return jnp.asarray(tokens, jnp.int32)


@pytest.mark.parametrize("options, gap", [
    # Two generation blocks per attention block; random order and a warp.
    (dict(block_length=2, window=3, steps=6, order="random", top_k=5), False),
    (dict(block_length=4, window=4, steps=4, mode="joint_then_remask", order="confidence"),
     False),
    (dict(block_length=4, window=3), True),
])
def test_cached_fef_makes_the_uncached_decisions(options, gap):
  tokens = _prompts(16, gap)
  run = functools.partial(fj.sample, _sampler_denoiser(), tokens, jax.random.key(3), "fef",
                          mask_id=MASK_ID, **options)
  plain, cached = run(), run(cache="exact")
  agreement = np.mean(np.asarray(plain.tokens) == np.asarray(cached.tokens))
  assert agreement >= 0.999, agreement
  for name in ("rounds", "tokens", "drafts_examined", "drafts_accepted"):
    np.testing.assert_array_equal(getattr(cached.stats, name), getattr(plain.stats, name))
  # One refresh call per attention block entered after the first: 2 or 3 blocks to fill
  # (blocks of 4: rounds do not move the cache themselves, see the fused test below).
  masked = np.asarray(tokens) == MASK_ID
  refreshes = np.array([len(set(np.flatnonzero(row) // SPAN)) - 1 for row in masked])
  np.testing.assert_array_equal(cached.stats.nfe, np.asarray(plain.stats.nfe) + refreshes)
  # Sequences: the first call; per refresh into the next attention block two spans of 2S
  # positions (`extend`), per refresh that skips a block two whole rows; W * S / L per
  # round; rounded up.
  rounds = np.asarray(cached.stats.rounds)
  per_refresh = 2 if gap else 2 * 2 * SPAN / LENGTH
  expected = np.ceil(1 + per_refresh * refreshes + rounds * options["window"] * SPAN / LENGTH)
  np.testing.assert_array_equal(cached.stats.sequences, expected)
  assert np.all(expected < np.asarray(plain.stats.sequences))


@pytest.mark.parametrize("options, prompt", [(dict(block_length=2, window=2), 4),
                                             (dict(block_length=2, window=1), 4),
                                             (dict(block_length=1, window=2, order="random"), 4),
                                             (dict(block_length=2, window=2), 0),
                                             (dict(block_length=1, window=2), 1)])
def test_fused_rounds_make_the_uncached_decisions_without_refresh_calls(options, prompt,
                                                                        monkeypatch):
  # Attention blocks of 2: each round runs over [previous block, window, next block] and
  # so moves the cache forward itself (`cache.fused_rounds`), the previous block once
  # for all copies (`extend_shared`). An empty prompt, or one of one token, starts in
  # the first block, which has no block before it.
  config = dataclasses.replace(BIDIRECTIONAL, attention="block_causal", block_length=2)
  denoiser = models.Denoiser(models.Transformer(config), _params())
  rng = np.random.default_rng(8)
  tokens = np.full((16, LENGTH), MASK_ID, np.int32)
  tokens[:, :prompt] = rng.integers(0, VOCAB, (16, prompt))
  run = functools.partial(fj.sample, denoiser, jnp.asarray(tokens), jax.random.key(4), "fef",
                          mask_id=MASK_ID, **options)
  cached = run(cache="exact")
  # The next block is evaluated once, as the last copy sees it (`shared_tail`): the
  # uncached rounds make the same decisions under the same rule for the next drafts.
  whole_sequences = speculative.whole_sequences
  monkeypatch.setattr(speculative, "whole_sequences",
                      lambda logits_fn, **kwargs: dataclasses.replace(
                          whole_sequences(logits_fn, **kwargs), shared_tail=True))
  plain = run()
  agreement = np.mean(np.asarray(plain.tokens) == np.asarray(cached.tokens))
  assert agreement >= 0.999, agreement
  for name in ("rounds", "tokens", "drafts_examined", "drafts_accepted", "nfe"):
    np.testing.assert_array_equal(getattr(cached.stats, name), getattr(plain.stats, name))
  # Sequences: the first call and (S + W * S + S) / L per round (the block before the
  # window, each copy's window, the block after it once), rounded up.
  expected = np.ceil(1 + np.asarray(cached.stats.rounds) * (2 + options["window"] * 2 + 2)
                     / LENGTH)
  np.testing.assert_array_equal(cached.stats.sequences, expected)


def test_block_causal_model_trains_with_the_usual_step_prompts_and_padding():
  # The attention is a model option: `config.model` carries it into training,
  # and the train step (usual masks, answers only, padding) needs nothing else.
  config = ml_collections.ConfigDict({"model": dict(
      d_model=32, num_layers=2, num_heads=4, mlp_dim=64, attention="block_causal",
      block_length=SPAN)})
  source = types.SimpleNamespace(vocab_size=VOCAB, mask_id=MASK_ID)
  assert run.model_config(config, source, LENGTH) == BLOCK_CAUSAL
  model = models.Transformer(BLOCK_CAUSAL)
  optimizer = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=3e-3, warmup_steps=0, total_steps=40, weight_decay=0.0))
  state = train_lib.create_train_state(_params(), optimizer, jax.random.key(1))
  step = jax.jit(functools.partial(
      train_lib.train_step, optimizer=optimizer,
      apply_fn=lambda p, x, v, t: model.apply({"params": p}, x, v, t),
      config=train_lib.LossConfig(mask_id=MASK_ID, prefix_fraction=0.25)))
  tokens = np.tile(np.arange(LENGTH) % VOCAB, (16, 1))
  valid = np.arange(LENGTH)[None, :] < np.where(np.arange(16) % 2, 12, LENGTH)[:, None]
  batch = {"tokens": jnp.asarray(np.where(valid, tokens, PAD_ID), jnp.int32),
           "valid": jnp.asarray(valid),
           "maskable": jnp.asarray(valid & (np.arange(LENGTH) >= SPAN)[None, :])}
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])


def _phrase_table6():
  """A strongly dependent joint over V=3, L=6: three whole phrases plus 3% smoothing."""
  return fj.oracles.JointTable.from_phrases(
      phrases=[[0, 0, 1, 1, 2, 2], [1, 2, 2, 0, 0, 1], [2, 1, 0, 2, 1, 0]],
      probs=[0.5, 0.3, 0.2], vocab_size=3, smoothing=0.03)


@pytest.mark.parametrize("denoiser,options,error,message", [
    ("plain", dict(block_length=2), TypeError, "block-local"),
    ("bidirectional", dict(block_length=2), TypeError, "exact cache"),
    ("oracle", dict(), ValueError, "needs block_length"),
    ("oracle", dict(block_length=4), ValueError, "exceeds"),
    ("oracle", dict(block_length=2, cache="bogus"), ValueError, "unknown cache"),
    ("oracle4", dict(block_length=2), ValueError, "multiple"),
    ("oracle_prompt", dict(block_length=2), ValueError, "one attention block"),
])
def test_bad_cache_requests_raise(denoiser, options, error, message):
  table = _phrase_table6()
  tokens = jnp.full((2, 6), table.mask_id, jnp.int32)
  logits_fn = {
      "plain": table.logits_fn,
      "bidirectional": models.Denoiser(models.Transformer(BIDIRECTIONAL), _params()),
      "oracle": fj.oracles.BlockCausal(table, 2),
      "oracle4": fj.oracles.BlockCausal(table, 4),
      "oracle_prompt": fj.oracles.BlockCausal(table, 2),
  }[denoiser]
  mask_id = table.mask_id
  if denoiser == "bidirectional":
    tokens, mask_id = jnp.full((2, LENGTH), MASK_ID, jnp.int32), MASK_ID
  if denoiser == "oracle_prompt":
    tokens = tokens.at[:, 0].set(1)  # a prompt of one token: blocks straddle
  options.setdefault("cache", "exact")
  with pytest.raises(error, match=message):
    fj.sample(logits_fn, tokens, jax.random.key(0), "fef", mask_id=mask_id, **options)
  with pytest.raises(TypeError, match="cache"):
    fj.sample(table.logits_fn, tokens, jax.random.key(0), "confidence",
              mask_id=table.mask_id, cache="exact")


def test_a_checked_mask_layout_is_remembered_but_a_bad_one_raises_every_time():
  # check_denoiser remembers small mask layouts it checked (a batch-1 call's fixed cost);
  # a bad layout must still raise on every call, with the same message as unremembered.
  oracle = fj.oracles.BlockCausal(_phrase_table6(), 2)
  good = np.full((2, 6), oracle.mask_id, np.int32)
  good[:, :2] = 1
  bad = good.copy()
  bad[1, 2] = 1  # row 1's masks start at 3: its first block (3, 4) straddles two
  check = functools.partial(cache.check_denoiser, oracle, "exact", 2, oracle.mask_id, 6)
  for _ in range(2):
    check(good)
    with pytest.raises(ValueError, match=r"generation block 0 of row 1 \(positions 3..4\)"):
      check(bad)
  many = np.tile(bad, (cache._MEMO_POSITIONS // 12 + 1, 1))  # too many to remember
  with pytest.raises(ValueError, match=r"generation block 0 of row 1 \(positions 3..4\)"):
    check(many)


def test_cached_fef_under_jit_and_eagerly_agree():
  oracle = fj.oracles.BlockCausal(_phrase_table6(), 2)
  tokens = jnp.full((3, 6), oracle.mask_id, jnp.int32).at[2, :2].set(1)
  run = functools.partial(fj.sample, oracle, tokens, jax.random.key(4), "fef",
                          mask_id=oracle.mask_id, block_length=1, window=2, cache="exact")
  jitted = run()
  with jax.disable_jit():
    eager = run()
  np.testing.assert_array_equal(jitted.tokens, eager.tokens)
  np.testing.assert_array_equal(jitted.stats.sequences, eager.stats.sequences)
  # Traced tokens: the alignment of blocks is not checked, the result is the same.
  traced = jax.jit(lambda t: fj.sample(oracle, t, jax.random.key(4), "fef",
                                       mask_id=oracle.mask_id, block_length=1, window=2,
                                       cache="exact").tokens)(tokens)
  np.testing.assert_array_equal(traced, jitted.tokens)


def test_block_causal_oracle_interface_is_consistent():
  table = _phrase_table6()
  oracle = fj.oracles.BlockCausal(table, 2)
  rng = np.random.default_rng(6)
  tokens = jnp.asarray(np.where(rng.random((5, 6)) < 0.5, rng.integers(0, 3, (5, 6)), 3),
                       jnp.int32)
  logits, cache = oracle.encode(tokens)
  # Block b ignores later blocks: the first block sees only positions 0..1. Both sides
  # are the table's conditionals, computed by different programs: equal up to round-off.
  depth = roundoff.joint_table_depth(table)
  first = table.logits_fn(tokens.at[:, 2:].set(3))[:, :2]
  roundoff.assert_within(logits[:, :2], first, roundoff.two_pass_log_prob_bound(first, depth),
                         "first block")

  def check_spans(got, span, start, label):
    """`got[b]` is the oracle's output on each copy of row b, at its span; returns the copies."""
    copies, width = span.shape[1:]
    all_copies = []
    for b in range(5):
      s = int(start[b])
      copies_CxL = jnp.broadcast_to(tokens[b], (copies, 6)).at[:, s:s + width].set(span[b])
      want = oracle(copies_CxL)[:, s:s + width]
      roundoff.assert_within(got[b], want, roundoff.two_pass_log_prob_bound(want, depth),
                             f"{label}, row {b}")
      all_copies.append(copies_CxL)
    return all_copies

  start = jnp.asarray([0, 2, 4, 2, 0], jnp.int32)
  span = jnp.asarray(rng.integers(0, 4, (5, 3, 2)), jnp.int32)
  check_spans(oracle.block_logits(cache, span, start), span, start, "one block")
  # A span of two attention blocks is block-causal inside too; `extend` also returns the
  # states with the span set to copy 0's (the oracle's cache is the state).
  start = jnp.asarray([0, 2, 2, 0, 2], jnp.int32)
  span = jnp.asarray(rng.integers(0, 4, (5, 2, 4)), jnp.int32)
  got, extended = oracle.extend(cache, span, start)
  for b, copies_CxL in enumerate(check_spans(got, span, start, "two-block span")):
    np.testing.assert_array_equal(extended[b], copies_CxL[0])
  # `extend_shared` with a tail: the copies as `extend` over the shared block and their
  # window; the tail (the block after the window) as the chosen copy sees it.
  shared = jnp.asarray(rng.integers(0, 4, (5, 2)), jnp.int32)
  tail = jnp.asarray(rng.integers(0, 4, (5, 2)), jnp.int32)
  window = jnp.asarray(rng.integers(0, 4, (5, 3, 2)), jnp.int32)
  shared_start, start = jnp.zeros(5, jnp.int32), jnp.full(5, 2, jnp.int32)
  got, tail_got, states = oracle.extend_shared(cache, shared, window, shared_start, start,
                                               tail, start + 2, 1)
  both = jnp.concatenate([jnp.broadcast_to(shared[:, None], (5, 3, 2)), window], axis=2)
  want, want_states = oracle.extend(cache, both, shared_start)
  np.testing.assert_array_equal(got, want[:, :, 2:])
  np.testing.assert_array_equal(states, want_states)
  for b in range(5):
    copy_L = tokens[b].at[:2].set(shared[b]).at[2:4].set(window[b, 1]).at[4:].set(tail[b])
    want_tail = oracle(copy_L[None])[0, 4:]
    roundoff.assert_within(tail_got[b], want_tail,
                           roundoff.two_pass_log_prob_bound(want_tail, depth), f"tail, row {b}")


NUM_SAMPLES = 20_000
ALPHA = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(block_length=2, window=2),
    dict(block_length=1, window=2),  # two generation blocks per attention block
    dict(block_length=2, window=2, steps=6, mode="joint_then_remask"),
])
def test_cached_fef_reproduces_a_block_causal_oracle_exactly(options):
  # The later blocks are masked whenever a block is decided, so the block-causal
  # oracle's conditionals are the table's: FeF must reproduce its joint.
  table = _phrase_table6()
  tokens = jnp.full((NUM_SAMPLES, table.length), table.mask_id, jnp.int32)
  result = fj.sample(fj.oracles.BlockCausal(table, 2), tokens, jax.random.key(21), "fef",
                     mask_id=table.mask_id, cache="exact", **options)
  p_value, tv = table_gof(table, result.tokens)
  assert p_value > ALPHA, (p_value, tv)
  noise = fj.stats.expected_tv_noise_floor(np.asarray(table.probs), NUM_SAMPLES)
  assert tv < 3 * noise, (tv, noise)
  assert math.isclose(float(result.stats.tokens.mean()), table.length)


@pytest.mark.slow
def test_cached_fef_reproduces_a_markov_chain_across_blocks():
  # Pairs inside a block, across block boundaries and far apart.
  chain = fj.oracles.MarkovChain.sticky(vocab_size=3, length=16, stay_prob=0.85)
  tokens = jnp.full((NUM_SAMPLES, chain.length), chain.mask_id, jnp.int32)
  result = fj.sample(fj.oracles.BlockCausal(chain, 4), tokens, jax.random.key(22), "fef",
                     mask_id=chain.mask_id, cache="exact", block_length=4, window=3,
                     order="random")
  pairs = [(0, 1), (3, 4), (7, 8), (5, 6), (2, 9), (0, 15)]
  p_values = [p for *_, p in fj.stats.pair_gof(np.asarray(result.tokens), chain, pairs)]
  assert fj.stats.bonferroni(p_values) > ALPHA, p_values
  assert float(result.stats.tokens_per_round.mean()) > 1.5
