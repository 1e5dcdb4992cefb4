"""FeF's approximate ("dual") cache for bidirectional denoisers.

`block_logits` of a bidirectional model attends to cached keys on both sides of
the span. Those depend on the cached state's span from the second layer on, so
the cache is exact in two cases we can test exactly: a copy equal to the cached
state, and a one-layer model (whose keys depend only on each position's own
token). The second makes `cache="approximate"` an exact sampler of a one-layer
model, which tests the sampler's windows, refreshes and statistics against the
enumerated prefix factorization (chi-square, alpha = 1e-3).
"""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import models
from tests import roundoff

VOCAB = 11
MASK_ID = VOCAB
LENGTH = 16
SPAN = 4
TWO_LAYERS = models.TransformerConfig(
    vocab_size=VOCAB, mask_id=MASK_ID, max_length=LENGTH, d_model=32, num_layers=2,
    num_heads=4, mlp_dim=64)
ONE_LAYER = dataclasses.replace(TWO_LAYERS, num_layers=1)


@functools.lru_cache(maxsize=None)
def _params(config):
  return models.init_params(config, jax.random.key(0))


_apply = jax.jit(lambda config, method, params, *args: models.Transformer(config).apply(
    {"params": params}, *args, method=method), static_argnums=(0, 1))


def _call(config, method, *args):
  return _apply(config, method, _params(config), *args)


def _state_and_valid(seed, batch=3):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (batch, LENGTH))
  tokens[rng.random((batch, LENGTH)) < 0.4] = MASK_ID
  valid = np.arange(LENGTH)[None, :] >= np.array([0, 3, 6][:batch])[:, None]  # left padding
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)


def _full_pass_at_span(config, tokens, valid, span_BxCxS, start_B):
  """The full pass of every copy, read at its span: the independent reference."""
  rows = []
  for b, start in enumerate(np.asarray(start_B)):
    copies = span_BxCxS.shape[1]
    full_CxL = jnp.broadcast_to(tokens[b], (copies, LENGTH)).at[:, start:start + SPAN].set(
        span_BxCxS[b])
    logits_CxLxV = _call(config, "__call__", full_CxL,
                         jnp.broadcast_to(valid[b], (copies, LENGTH)))
    rows.append(logits_CxLxV[:, start:start + SPAN])
  return np.stack(rows)


def _error_at_valid(got, reference, valid, start_B):
  span_valid = np.stack([np.asarray(valid[b, s:s + SPAN]) for b, s in enumerate(start_B)])
  return np.where(span_valid[:, None, :, None], np.abs(np.asarray(got) - reference), 0).max()


START_B = jnp.asarray([0, 7, 12], jnp.int32)


def test_a_copy_equal_to_the_cached_state_gets_the_full_pass():
  tokens, valid = _state_and_valid(0)
  _, cache = _call(TWO_LAYERS, "encode", tokens, valid)
  own_Bx1xS = jnp.stack([tokens[b, s:s + SPAN] for b, s in enumerate(np.asarray(START_B))])[:, None]
  got = _call(TWO_LAYERS, "block_logits", cache, own_Bx1xS, START_B)
  reference = _full_pass_at_span(TWO_LAYERS, tokens, valid, own_Bx1xS, START_B)
  # The cached block pass and the full pass are different programs: two passes' round-off.
  bound = roundoff.two_pass_bound(roundoff.fef_chain(TWO_LAYERS, LENGTH), reference)
  assert _error_at_valid(got, reference, valid, START_B) <= bound, bound


def test_the_dual_cache_is_exact_for_one_layer_and_approximate_for_two():
  tokens, valid = _state_and_valid(1)
  span_BxCxS = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB + 1, (3, 5, SPAN)),
                           jnp.int32)
  errors, bounds = {}, {}
  for name, config in (("one", ONE_LAYER), ("two", TWO_LAYERS)):
    _, cache = _call(config, "encode", tokens, valid)
    got = _call(config, "block_logits", cache, span_BxCxS, START_B)
    reference = _full_pass_at_span(config, tokens, valid, span_BxCxS, START_B)
    errors[name] = _error_at_valid(got, reference, valid, START_B)
    bounds[name] = roundoff.two_pass_bound(roundoff.fef_chain(config, LENGTH), reference)
  # Exact up to two passes' round-off (different programs) for one layer.
  assert errors["one"] <= bounds["one"], (errors, bounds)
  # The suffix is seen: a prefix-only cache would differ from the full pass here.
  assert errors["two"] > 1e-3, errors


@dataclasses.dataclass(frozen=True, eq=False)
class _Sharpened:
  """A bidirectional denoiser with logits scaled by `factor` (stronger dependencies)."""
  denoiser: models.Denoiser
  factor: float = 6.0

  def __call__(self, tokens_NxL):
    return self.factor * self.denoiser(tokens_NxL)

  def encode(self, tokens_NxL):
    logits, cache = self.denoiser.encode(tokens_NxL)
    return self.factor * logits, cache

  def block_logits(self, cache, tokens_NxCxS, start_N):
    return self.factor * self.denoiser.block_logits(cache, tokens_NxCxS, start_N)


SMALL_VOCAB = 3
SMALL = models.TransformerConfig(
    vocab_size=SMALL_VOCAB, mask_id=SMALL_VOCAB, max_length=6, d_model=16, num_layers=1,
    num_heads=2, mlp_dim=32)


@functools.lru_cache(maxsize=None)
def _small_denoiser(num_layers=1):
  config = dataclasses.replace(SMALL, num_layers=num_layers)
  params = jax.tree.map(lambda p: 3.0 * p, models.init_params(config, jax.random.key(7)))
  return _Sharpened(models.Denoiser(models.Transformer(config), params))


PROMPT = (1, 0)


def _prefix_factorized_joint(denoiser):
  """float64[V^4]: the joint of the 4 answer positions, left to right, enumerated."""
  mask = SMALL.mask_id
  probs = np.zeros((SMALL_VOCAB,) * 4)
  for answer in itertools.product(range(SMALL_VOCAB), repeat=4):
    p = 1.0
    for i, value in enumerate(answer):
      # Left to right, blocks in turn: factor i conditions on exactly answer[:i].
      state = list(PROMPT) + [*answer[:i]] + [mask] * (4 - i)
      logits = np.asarray(denoiser(jnp.asarray([state], jnp.int32))[0, 2 + i], np.float64)
      p *= np.exp(logits[value] - np.logaddexp.reduce(logits[:SMALL_VOCAB]))
    probs[answer] = p
  return probs.reshape(-1)


NUM_SAMPLES = 20_000
ALPHA = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("num_layers,block_length,refresh_every", [
    (1, 2, 0),  # two blocks: a refresh on entering the second
    (1, 4, 1),  # one block taking several rounds, refreshed before each
    (2, 4, 0),  # stale keys: the approximation, rejected (the test's power)
])
def test_approximate_cache_samples_a_one_layer_model_exactly(num_layers, block_length,
                                                             refresh_every):
  denoiser = _small_denoiser(num_layers)
  probs = _prefix_factorized_joint(denoiser)
  tokens = jnp.tile(jnp.asarray([list(PROMPT) + [SMALL.mask_id] * 4], jnp.int32),
                    (NUM_SAMPLES, 1))
  result = fj.sample(denoiser, tokens, jax.random.key(11), "fef", mask_id=SMALL.mask_id,
                     block_length=block_length, window=2, cache="approximate",
                     refresh_every=refresh_every)
  answers = np.asarray(result.tokens)[:, 2:]
  index = np.ravel_multi_index(answers.T, (SMALL_VOCAB,) * 4)
  counts = np.bincount(index, minlength=probs.size)
  _, _, p_value = fj.stats.chi_square_gof(counts, probs)
  if num_layers == 2:
    assert p_value < 1e-6, p_value
    return
  assert p_value > ALPHA, p_value
  assert float(np.mean(result.stats.rounds)) > (1.2 if block_length == 4 else 0)
  # Power: the product of the marginals at the prompt state is far from this joint.
  marginals = np.exp(np.asarray(jax.nn.log_softmax(denoiser(tokens[:1])[0, 2:], axis=-1),
                                np.float64))
  product = functools.reduce(np.multiply.outer, list(marginals)).reshape(-1)
  _, _, p_product = fj.stats.chi_square_gof(counts, product / product.sum())
  assert p_product < 1e-6, p_product


def _prompts(batch, length=LENGTH, prompt=5):
  rng = np.random.default_rng(5)
  tokens = np.full((batch, length), MASK_ID)
  tokens[:, :prompt] = rng.integers(0, VOCAB, (batch, prompt))
  return jnp.asarray(tokens, jnp.int32)


@functools.lru_cache(maxsize=None)
def _denoiser():
  return models.Denoiser(models.Transformer(TWO_LAYERS), _params(TWO_LAYERS))


@pytest.mark.parametrize("refresh_every", [0, 1, 3])
def test_statistics_count_every_refresh(refresh_every):
  tokens = _prompts(6)  # 11 masks: blocks of 4, 4, 3
  result = fj.sample(_denoiser(), tokens, jax.random.key(3), "fef", mask_id=MASK_ID,
                     block_length=SPAN, window=3, cache="approximate",
                     refresh_every=refresh_every)
  assert not np.any(np.asarray(result.tokens) == MASK_ID)
  rounds, blocks = np.asarray(result.stats.rounds), 3
  nfe = np.asarray(result.stats.nfe)
  if refresh_every == 0:
    refreshes = np.full_like(rounds, blocks - 1)  # one per block entered after the first
  elif refresh_every == 1:
    refreshes = blocks - 1 + rounds - blocks  # and before every later round of a block
  else:
    assert np.all(nfe >= 1 + blocks - 1 + rounds)
    refreshes = nfe - 1 - rounds
  np.testing.assert_array_equal(nfe, 1 + refreshes + rounds)
  # Sequences: the first call, one per refresh, W * S / L per round; rounded up.
  expected = np.ceil(1 + refreshes + rounds * 3 * SPAN / LENGTH)
  np.testing.assert_array_equal(result.stats.sequences, expected)


def test_rows_are_independent_and_jit_matches_eager():
  # Rows refresh at different rounds; other rows' refreshes must not touch row 0.
  tokens = _prompts(3, prompt=9)
  other = tokens.at[1:, 0].set((tokens[1:, 0] + 1) % VOCAB).at[2, 9:11].set(2)
  run = functools.partial(fj.sample, _denoiser(), key=jax.random.key(4), method="fef",
                          mask_id=MASK_ID, block_length=SPAN, window=2, steps=4,
                          cache="approximate", refresh_every=2)
  first, second = run(tokens_BxL=tokens), run(tokens_BxL=other)
  np.testing.assert_array_equal(first.tokens[0], second.tokens[0])
  np.testing.assert_array_equal(first.stats.nfe[0], second.stats.nfe[0])
  assert not np.array_equal(first.tokens[1:], second.tokens[1:])
  with jax.disable_jit():
    eager = run(tokens_BxL=tokens)
  np.testing.assert_array_equal(eager.tokens, first.tokens)
  np.testing.assert_array_equal(eager.stats.nfe, first.stats.nfe)


def test_a_window_at_the_end_of_the_sequence_is_moved_inside():
  # 6 masks with blocks of 4: the second block starts 2 positions before the end.
  tokens = _prompts(2, prompt=LENGTH - 6)
  result = fj.sample(_denoiser(), tokens, jax.random.key(5), "fef", mask_id=MASK_ID,
                     block_length=SPAN, window=4, cache="approximate")
  assert not np.any(np.asarray(result.tokens) == MASK_ID)
  np.testing.assert_array_equal(result.tokens[:, :LENGTH - 6], tokens[:, :LENGTH - 6])


@pytest.mark.parametrize("options,tokens,error,message", [
    (dict(block_length=4, refresh_every=2), None, ValueError, "only applies"),
    (dict(block_length=4, cache="approximate", refresh_every=-1), None, ValueError,
     "refresh_every"),
    (dict(cache="approximate"), None, ValueError, "needs block_length"),
    (dict(block_length=LENGTH + 1, cache="approximate"), None, ValueError, "exceeds"),
    (dict(block_length=4, cache="approximate"), "scattered", ValueError, "contiguous"),
    (dict(block_length=4, cache="approximate"), "plain", TypeError, "block-local"),
])
def test_bad_requests_raise(options, tokens, error, message):
  denoiser, prompts = _denoiser(), _prompts(2)
  if tokens == "scattered":
    prompts = prompts.at[:, 6:12:2].set(1)  # masks at 5, 7, 9, ...: a block spans 7
  if tokens == "plain":
    denoiser = _denoiser().__call__  # logits only, no cache interface
  with pytest.raises(error, match=message):
    fj.sample(denoiser, prompts, jax.random.key(0), "fef", mask_id=MASK_ID, **options)
