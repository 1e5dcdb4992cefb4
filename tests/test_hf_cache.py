"""Cached block-local evaluation of the imported bidirectional networks (LLaDA, Dream).

`Network.encode` returns the full pass and every layer's keys and values;
`Network.block_logits` evaluates copies of a span against them ("dual cache").
Checked on tiny random networks, LLaDA-style and Dream-style (q/k/v biases,
shifted logits), with grouped-query and multi-head attention, with and without
left padding: the cache is exact for a copy whose span is the cached state's and
for a one-layer network (whose keys depend on each position's own token only),
and only approximate otherwise.
"""
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax.generate import left_padding_valid_fn
from fef_jax.models import hf
from fef_jax.models.hf import llada
from tests import roundoff

VOCAB = 11
MASK_ID = 10
PAD_ID = 0
LENGTH = 12
SPAN = 4
BASE = llada.NetworkConfig(vocab_size=VOCAB, d_model=16, num_layers=2, num_heads=2,
                           num_kv_heads=1, head_dim=8, mlp_dim=32, rope_theta=10000.0,
                           norm_eps=1e-5)
CONFIGS = {
    "llada-gqa": BASE,
    "llada-mha-tied": dataclasses.replace(BASE, num_kv_heads=2, tie_embeddings=True),
    "dream-gqa": dataclasses.replace(BASE, qkv_bias=True, shift_logits=True),
    "dream-mha": dataclasses.replace(BASE, num_kv_heads=2, qkv_bias=True, shift_logits=True),
}
# Per-row starts: 0, the last span (start + S = L), and ones inside / over the padding.
STARTS = [(0, 5, 8), (1, 0, 3), (8, 8, 0)]
PADDINGS = {"unpadded": (0, 0, 0), "left-padded": (0, 3, 5)}


@functools.lru_cache(maxsize=None)
def _params(config):
  """Random parameters, perturbed so that biases and norm scales are not trivial."""
  params = llada.Network(config).init(jax.random.key(0),
                                      jnp.zeros((1, LENGTH), jnp.int32))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [leaf + 0.3 * jax.random.normal(key, leaf.shape)
                                   for leaf, key in zip(leaves, keys)])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(config, method, params, *args):
  return llada.Network(config).apply({"params": params}, *args, method=method)


def _call(config, method, *args):
  return _apply(config, method, _params(config), *args)


def _denoiser(config, padded):
  return llada.Denoiser(llada.Network(config), _params(config),
                        left_padding_valid_fn(PAD_ID) if padded else None)


def _tokens(seed, pads, batch=3):
  """Random tokens (masks included, no pad ids) with `pads[b]` leading pads in row b."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, (batch, LENGTH))
  tokens[rng.random((batch, LENGTH)) < 0.3] = MASK_ID
  for b, pad in enumerate(pads):
    tokens[b, :pad] = PAD_ID
  return jnp.asarray(tokens, jnp.int32)


def _reference(config, tokens, valid, span_NxCxS, start_N):
  """The full pass of every copy (validity as cached), at its span: [N, C, S, V]."""
  rows = []
  for b in range(tokens.shape[0]):
    start, copies = int(start_N[b]), span_NxCxS.shape[1]
    full_CxL = jnp.broadcast_to(tokens[b], (copies, LENGTH)).at[:, start:start + SPAN].set(
        span_NxCxS[b])
    logits_CxLxV = _call(config, "__call__", full_CxL,
                         jnp.broadcast_to(valid[b], (copies, LENGTH)))
    rows.append(logits_CxLxV[:, start:start + SPAN])
  return np.stack(rows)


def _span_valid(valid, start_N):
  """bool[N, 1, S, 1]: the valid positions of each row's span."""
  return np.stack([np.asarray(valid[b, s:s + SPAN])
                   for b, s in enumerate(start_N)])[:, None, :, None]


def _max_error(got, want, valid, start_N):
  error = np.abs(np.asarray(got) - np.asarray(want))
  return np.where(_span_valid(valid, start_N), error, 0.0).max()


def _round_off(config, want):
  """Two float32 passes (the cached span's and the full pass) of one network, over
  LENGTH positions: see roundoff.transformer_chain."""
  return roundoff.two_pass_bound(roundoff.network_chain(config, LENGTH), want)


@pytest.mark.parametrize("padding", sorted(PADDINGS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encode_returns_the_full_pass_and_every_layers_keys_and_values(name, padding):
  config = CONFIGS[name]
  denoiser = _denoiser(config, padding == "left-padded")
  tokens = _tokens(0, PADDINGS[padding])
  logits, cache = jax.jit(denoiser.encode)(tokens)
  full = jax.jit(denoiser)(tokens)  # a different program: equal up to round-off
  np.testing.assert_allclose(logits, full, atol=_round_off(config, full), rtol=0)
  shape = (3, config.num_layers, LENGTH, config.num_kv_heads, config.head_dim)
  assert cache.keys_NxYxLxGxK.shape == cache.values_NxYxLxGxK.shape == shape
  assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(cache))
  np.testing.assert_array_equal(cache.tokens_NxL, tokens)
  want_valid = (left_padding_valid_fn(PAD_ID)(tokens) if padding == "left-padded"
                else np.ones(tokens.shape, bool))
  np.testing.assert_array_equal(cache.valid_NxL, want_valid)


@pytest.mark.parametrize("starts", STARTS)
@pytest.mark.parametrize("padding", sorted(PADDINGS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_block_logits_of_the_cached_span_equal_the_full_pass(name, padding, starts):
  config = CONFIGS[name]
  denoiser = _denoiser(config, padding == "left-padded")
  tokens = _tokens(1, PADDINGS[padding])
  start_N = jnp.asarray(starts, jnp.int32)
  logits, cache = jax.jit(denoiser.encode)(tokens)
  span = jnp.stack([tokens[b, s:s + SPAN] for b, s in enumerate(starts)])[:, None]
  got = jax.jit(denoiser.block_logits)(cache, jnp.concatenate([span, span], axis=1), start_N)
  assert got.shape == (3, 2, SPAN, VOCAB) and got.dtype == jnp.float32
  want = np.stack([logits[b, s:s + SPAN] for b, s in enumerate(starts)])[:, None]
  assert (_max_error(got, np.broadcast_to(want, got.shape), cache.valid_NxL, starts)
          <= _round_off(config, want))
  assert np.isfinite(np.asarray(got)).all()


@pytest.mark.parametrize("starts", STARTS)
@pytest.mark.parametrize("padding", sorted(PADDINGS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_block_logits_of_any_copy_are_exact_for_one_layer(name, padding, starts):
  config = dataclasses.replace(CONFIGS[name], num_layers=1)
  denoiser = _denoiser(config, padding == "left-padded")
  tokens = _tokens(2, PADDINGS[padding])
  start_N = jnp.asarray(starts, jnp.int32)
  _, cache = jax.jit(denoiser.encode)(tokens)
  span = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, (3, 3, SPAN)), jnp.int32)
  got = jax.jit(denoiser.block_logits)(cache, span, start_N)
  want = _reference(config, tokens, cache.valid_NxL, span, start_N)
  assert _max_error(got, want, cache.valid_NxL, starts) <= _round_off(config, want)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_block_logits_are_only_approximate_with_two_layers(name):
  # The cached keys outside the span were computed from the cached state's span.
  config = CONFIGS[name]
  denoiser = _denoiser(config, True)
  tokens = _tokens(4, PADDINGS["left-padded"])
  starts = (4, 6, 8)
  start_N = jnp.asarray(starts, jnp.int32)
  _, cache = jax.jit(denoiser.encode)(tokens)
  span = jnp.asarray(np.random.default_rng(5).integers(0, VOCAB, (3, 2, SPAN)), jnp.int32)
  got = jax.jit(denoiser.block_logits)(cache, span, start_N)
  want = _reference(config, tokens, cache.valid_NxL, span, start_N)
  # Beyond round-off, the bound the exact cases above are held to.
  assert _max_error(got, want, cache.valid_NxL, starts) > _round_off(config, want)


@pytest.mark.parametrize("name", ["llada-gqa", "dream-mha"])
def test_jitted_block_logits_equal_eager(name):
  config = CONFIGS[name]
  denoiser = _denoiser(config, True)
  tokens = _tokens(6, PADDINGS["left-padded"])
  start_N = jnp.asarray([0, 5, 8], jnp.int32)
  _, cache = denoiser.encode(tokens)
  span = jnp.asarray(np.random.default_rng(7).integers(0, VOCAB, (3, 2, SPAN)), jnp.int32)
  eager = denoiser.block_logits(cache, span, start_N)
  jitted = jax.jit(denoiser.block_logits)(cache, span, start_N)
  assert np.isfinite(np.asarray(eager)).all()
  # XLA fusion round-off: two float32 passes of one network.
  np.testing.assert_allclose(jitted, eager, atol=_round_off(config, eager), rtol=0)


def test_denoiser_reports_an_approximate_cache_without_blocks():
  denoiser = _denoiser(CONFIGS["dream-gqa"], True)
  assert denoiser.exact_cache is False and denoiser.block_length is None
  model = hf.HFModel(architecture="dream", config=CONFIGS["dream-gqa"],
                     params=_params(CONFIGS["dream-gqa"]), mask_id=MASK_ID, eos_id=PAD_ID,
                     pad_id=PAD_ID, tokenizer=None, checkpoint_config={})
  assert callable(model.logits_fn().block_logits) and not model.logits_fn().exact_cache


@pytest.mark.parametrize("name", ["llada-gqa", "dream-gqa"])
def test_bad_inputs_raise_clear_errors(name):
  config = CONFIGS[name]
  denoiser = _denoiser(config, False)
  tokens = _tokens(8, PADDINGS["unpadded"])
  _, cache = denoiser.encode(tokens)
  span = jnp.zeros((3, 2, SPAN), jnp.int32)
  start_N = jnp.zeros((3,), jnp.int32)
  with pytest.raises(ValueError, match=r"tokens_NxL must be an integer array of shape \[N, L\]"):
    denoiser.encode(tokens[0])
  with pytest.raises(ValueError, match=r"tokens_NxL must be an integer"):
    denoiser.encode(tokens.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"valid_NxL must be bool"):
    _call(config, "encode", tokens, jnp.ones(tokens.shape, jnp.int32))
  with pytest.raises(ValueError, match=r"tokens_NxCxS must be an integer array"):
    denoiser.block_logits(cache, span[:, 0], start_N)
  with pytest.raises(ValueError, match=r"tokens_NxCxS must be an integer array"):
    denoiser.block_logits(cache, span.astype(jnp.float32), start_N)
  with pytest.raises(ValueError, match="cache's batch 3"):
    denoiser.block_logits(cache, span[:2], start_N)
  too_long = LENGTH if config.shift_logits else LENGTH + 1  # Dream needs S + 1 <= L
  needs = f"S {'+ 1 ' if config.shift_logits else ''}<= its length {LENGTH}"
  with pytest.raises(ValueError, match=re.escape(needs)):
    denoiser.block_logits(cache, jnp.zeros((3, 1, too_long), jnp.int32), start_N)
  with pytest.raises(ValueError, match=r"start_N must be an integer array of shape \(3,\)"):
    denoiser.block_logits(cache, span, start_N.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"start_N must be an integer array of shape \(3,\)"):
    denoiser.block_logits(cache, span, start_N[:2])
  with pytest.raises(ValueError, match="cache's batch"):  # under jit too
    jax.jit(denoiser.block_logits)(cache, span[:2], start_N)
  # The longest span allowed works: S = L (LLaDA), S = L - 1 (Dream).
  longest = too_long - 1
  assert denoiser.block_logits(cache, jnp.zeros((3, 1, longest), jnp.int32),
                               start_N).shape == (3, 1, longest, VOCAB)


@pytest.mark.parametrize("name", ["llada-gqa", "dream-gqa"])
def test_fef_with_the_approximate_cache_samples_a_left_padded_batch(name):
  tokens = np.full((3, LENGTH), MASK_ID)
  tokens[:, :4] = [[1, 2, 3, 4], [PAD_ID, PAD_ID, 5, 6], [PAD_ID, 7, 8, 9]]
  tokens = jnp.asarray(tokens, jnp.int32)
  result = fj.sample(_denoiser(CONFIGS[name], padded=True), tokens, jax.random.key(0),
                     "fef", mask_id=MASK_ID, block_length=SPAN, window=2,
                     cache="approximate", refresh_every=1)
  out = np.asarray(result.tokens)
  assert not np.any(out == MASK_ID)
  np.testing.assert_array_equal(out[:, :4], np.asarray(tokens[:, :4]))
  # Two blocks: the first call, a refresh before every round but each block's first.
  rounds, nfe = np.asarray(result.stats.rounds), np.asarray(result.stats.nfe)
  np.testing.assert_array_equal(nfe, 2 * rounds)
  # Sequences: one per call outside the rounds, 2 * S / L per round; rounded up.
  np.testing.assert_array_equal(result.stats.sequences,
                                np.ceil(nfe - rounds + rounds * 2 * SPAN / LENGTH))
