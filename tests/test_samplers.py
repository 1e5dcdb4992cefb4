"""Properties every sampler must have: complete outputs, untouched prompts, jit == no-jit,
independent rows, honest statistics, block order, and clear errors on bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import noise
from fef_jax import warp
from fef_jax.samplers import selection
from fef_jax.samplers import random_sizes
from fef_jax.samplers.loop import StepContext

CONFIGS = [
    ("ancestral", dict(steps=3)),
    ("confidence", dict(steps=4, block_length=4)),
    ("threshold", dict(threshold=0.6)),
    ("threshold", dict(factor=1.0)),
    ("eb", dict(gamma=0.5)),
    ("first_hitting", {}),
    ("first_hitting", dict(select="position", block_length=3)),
    ("first_hitting", dict(select="confidence")),  # the generic step: the plan reads x0
    ("first_hitting", dict(select="dilated", block_length=4)),
    ("random_sizes", dict(steps=3)),
    ("fef", dict(window=3)),
    ("fef", dict(window=2, steps=4, block_length=4, order="random", top_k=2)),
    ("fef", dict(mode="joint_then_remask", steps=3, window=4, order="confidence")),
    ("fef", dict(window=3, order="dilated")),
    ("first_hitting", dict(select="parity")),
    ("fef", dict(window=3, order="parity")),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for m, o in CONFIGS]


@functools.lru_cache(maxsize=None)
def _hmm():
  return fj.oracles.HiddenMarkovModel.random(jax.random.key(0), hidden=3, vocab_size=5,
                                             length=9, concentration=0.5)


def _prompts(batch=4):
  hmm = _hmm()
  tokens = np.full((batch, hmm.length), hmm.mask_id)
  tokens[:, 0] = np.arange(batch) % 5          # different prompts per row
  tokens[1, 4] = 3                              # a prompt token inside the answer
  tokens[-1, :3] = [1, 2, 3]                    # a longer prompt
  return jnp.asarray(tokens, jnp.int32)


@pytest.mark.parametrize("method,options", CONFIGS, ids=IDS)
def test_output_is_complete_and_prompts_are_untouched(method, options):
  hmm, tokens = _hmm(), _prompts()
  result = fj.sample(hmm.logits_fn, tokens, jax.random.key(1), method,
                     mask_id=hmm.mask_id, **options)
  out, given = np.asarray(result.tokens), np.asarray(tokens)
  assert out.shape == given.shape and out.dtype == np.int32
  assert np.all((out >= 0) & (out < hmm.vocab_size))
  prompt = given != hmm.mask_id
  np.testing.assert_array_equal(out[prompt], given[prompt])
  stats = result.stats
  np.testing.assert_array_equal(stats.tokens, (~prompt).sum(1))
  assert np.all(np.asarray(stats.rounds) >= 1)
  # Every round decides at least one position. A joint_then_remask step decides every
  # eligible position and re-masks some, so its rounds are bounded by the positions
  # decided (examined drafts), which may exceed the tokens kept.
  decided = (stats.drafts_examined if options.get("mode") == "joint_then_remask"
             else stats.tokens)
  assert np.all(np.asarray(stats.rounds) <= np.asarray(decided))
  if method == "fef":
    # One call for the first drafts, then one batched call of `window` copies per round.
    np.testing.assert_array_equal(stats.nfe, 1 + np.asarray(stats.rounds))
    np.testing.assert_array_equal(stats.sequences, 1 + options["window"] * np.asarray(stats.rounds))
    assert np.all(np.asarray(stats.drafts_accepted) <= np.asarray(stats.drafts_examined))
  else:
    np.testing.assert_array_equal(stats.nfe, stats.rounds)
    np.testing.assert_array_equal(stats.sequences, stats.nfe)


@pytest.mark.parametrize("method,options", CONFIGS, ids=IDS)
def test_jit_and_no_jit_give_identical_tokens(method, options):
  hmm, tokens = _hmm(), _prompts(2)
  run = functools.partial(fj.sample, hmm.logits_fn, tokens, jax.random.key(7), method,
                          mask_id=hmm.mask_id, **options)
  jitted = run()
  with jax.disable_jit():
    eager = run()
  np.testing.assert_array_equal(jitted.tokens, eager.tokens)
  np.testing.assert_array_equal(jitted.stats.nfe, eager.stats.nfe)


@pytest.mark.parametrize("method,options", CONFIGS, ids=IDS)
def test_rows_are_independent_of_each_other(method, options):
  hmm = _hmm()
  tokens = np.asarray(_prompts())
  other = tokens.copy()
  other[1:, 0] = (other[1:, 0] + 1) % 5  # change every row but the first
  other[3, 1:4] = [4, 4, 4]
  key = jax.random.key(3)
  first = fj.sample(hmm.logits_fn, jnp.asarray(tokens), key, method, mask_id=hmm.mask_id, **options)
  second = fj.sample(hmm.logits_fn, jnp.asarray(other), key, method, mask_id=hmm.mask_id, **options)
  np.testing.assert_array_equal(first.tokens[0], second.tokens[0])
  np.testing.assert_array_equal(first.stats.nfe[0], second.stats.nfe[0])
  assert not np.array_equal(first.tokens[1:], second.tokens[1:])


def test_greedy_fef_equals_sequential_greedy_decoding_in_the_same_order():
  hmm, tokens = _hmm(), _prompts()
  for order, select in (("left_to_right", "position"), ("dilated", "dilated"),
                        ("confidence", "confidence")):
    fef = fj.sample(hmm.logits_fn, tokens, jax.random.key(0), "fef", mask_id=hmm.mask_id,
                    temperature=0.0, window=3, order=order)
    sequential = fj.sample(hmm.logits_fn, tokens, jax.random.key(1), "first_hitting",
                           mask_id=hmm.mask_id, temperature=0.0, select=select)
    if order != "confidence":  # one fixed order of the positions: the same decoding
      np.testing.assert_array_equal(fef.tokens, sequential.tokens)
    assert np.all(np.asarray(fef.stats.rounds) <= np.asarray(sequential.stats.rounds))
  # Left to right, greedy FeF is autoregressive greedy decoding: check it by hand.
  expected = np.asarray(tokens).copy()
  for row in range(expected.shape[0]):
    for pos in range(expected.shape[1]):
      if expected[row, pos] == hmm.mask_id:
        logits = hmm.logits_fn(jnp.asarray(expected[row:row + 1]))
        expected[row, pos] = int(jnp.argmax(logits[0, pos]))
  fef = fj.sample(hmm.logits_fn, tokens, jax.random.key(5), "fef", mask_id=hmm.mask_id,
                  temperature=0.0, window=4)
  np.testing.assert_array_equal(fef.tokens, expected)


def _counting_denoiser(vocab_size, mask_id):
  """Predicts, at every position, the number of revealed tokens in the row (mod V)."""
  def logits_fn(tokens_NxL):
    revealed_N = jnp.sum(tokens_NxL != mask_id, axis=1)
    one_hot = jax.nn.one_hot(revealed_N % vocab_size, vocab_size) * 30.0
    return jnp.broadcast_to(one_hot[:, None, :], (*tokens_NxL.shape, vocab_size))
  return logits_fn


@pytest.mark.parametrize("method", ["first_hitting", "confidence", "fef"])
def test_blocks_are_decoded_one_after_another(method):
  # With one token per step and a denoiser predicting "how many tokens are
  # revealed", the values written into a block reveal when it was decoded.
  vocab, length, mask = 64, 10, 63
  logits_fn = _counting_denoiser(vocab, mask)
  tokens = np.full((3, length), mask)
  tokens[:, 0] = 1
  tokens[1, 1] = 1
  options = dict(block_length=3, temperature=0.0)
  if method != "first_hitting":
    options["steps"] = 9
  if method == "fef":
    options["window"] = 1
  out = np.asarray(fj.sample(logits_fn, jnp.asarray(tokens), jax.random.key(0), method,
                             mask_id=mask, **options).tokens)
  for row in range(3):
    prompt_len = int((tokens[row] != mask).sum())
    generated = out[row, prompt_len:]
    # Block b is decoded at steps 3b..3b+2, i.e. with prompt_len + 3b.. revealed tokens.
    for b in range(0, len(generated), 3):
      block = np.sort(generated[b:b + 3])
      np.testing.assert_array_equal(block, prompt_len + np.arange(b, b + len(block)))


def test_mask_inside_the_vocabulary_is_never_sampled():
  vocab, mask = 6, 2
  def logits_fn(tokens_NxL):
    return jnp.zeros((*tokens_NxL.shape, vocab)).at[..., mask].set(20.0)
  tokens = jnp.full((64, 5), mask, jnp.int32)
  for method in fj.METHODS:
    out = np.asarray(fj.sample(logits_fn, tokens, jax.random.key(0), method, mask_id=mask).tokens)
    assert not np.any(out == mask), method


def test_steps_set_the_number_of_calls():
  hmm = _hmm()
  tokens = jnp.full((3, 9), hmm.mask_id, jnp.int32)
  for steps in (1, 3, 9):
    result = fj.sample(hmm.logits_fn, tokens, jax.random.key(0), "confidence",
                       mask_id=hmm.mask_id, steps=steps)
    np.testing.assert_array_equal(result.stats.nfe, steps)
    np.testing.assert_allclose(result.stats.tokens_per_call, 9 / steps)
  first_hitting = fj.sample(hmm.logits_fn, tokens, jax.random.key(0), "first_hitting",
                            mask_id=hmm.mask_id)
  np.testing.assert_array_equal(first_hitting.stats.nfe, 9)
  # Ancestral steps may reveal nothing; more steps than tokens still finish in budget.
  ancestral = fj.sample(hmm.logits_fn, tokens, jax.random.key(0), "ancestral",
                        mask_id=hmm.mask_id, steps=40)
  assert np.all(np.asarray(ancestral.tokens) != hmm.mask_id)
  assert np.all(np.asarray(ancestral.stats.nfe) <= 40)
  assert np.any(np.asarray(ancestral.stats.nfe) > 9)


# ---------------------------------------------------------------- bad input


def _sample(tokens=None, key=None, method="fef", logits_fn=None, **options):
  hmm = _hmm()
  tokens = jnp.full((2, 9), hmm.mask_id, jnp.int32) if tokens is None else tokens
  key = jax.random.key(0) if key is None else key
  return fj.sample(logits_fn or hmm.logits_fn, tokens, key, method,
                   mask_id=options.pop("mask_id", hmm.mask_id), **options)


@pytest.mark.parametrize("tokens,error,match", [
    (jnp.full((2, 9), 5.0), TypeError, "integer"),
    (jnp.full((9,), 5, jnp.int32), ValueError, r"\[batch, length\]"),
    (jnp.full((1, 2, 9), 5, jnp.int32), ValueError, r"\[batch, length\]"),
    (jnp.zeros((0, 9), jnp.int32), ValueError, r"\[batch, length\]"),
    (jnp.asarray([[5] * 8 + [7]]), ValueError, "outside the vocabulary"),
    (jnp.asarray([[5] * 8 + [-1]]), ValueError, "outside the vocabulary"),
    (jnp.asarray([[5] * 9, [0] * 9]), ValueError, r"rows \[1\] contain no mask_id"),
])
def test_bad_tokens_are_rejected_clearly(tokens, error, match):
  with pytest.raises(error, match=match):
    _sample(tokens)


@pytest.mark.parametrize("options,error,match", [
    (dict(method="beam"), ValueError, "unknown method 'beam'"),
    (dict(window=0), ValueError, "window must be an integer >= 1"),
    (dict(window=2.5), ValueError, "window"),
    (dict(steps=0), ValueError, "steps must be a positive integer"),
    (dict(block_length=-3), ValueError, "block_length"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=99), ValueError, "top_k=99 exceeds the vocabulary size 5"),
    (dict(order="backwards"), ValueError, "unknown order"),
    (dict(mode="parallel"), ValueError, "unknown mode"),
    (dict(select="smart"), ValueError, "unknown select rule"),
    (dict(method="threshold", threshold=1.5), ValueError, "threshold"),
    (dict(method="ancestral", schedule="zigzag"), ValueError, "zigzag"),
    (dict(method="confidence", window=4), TypeError, "takes no option"),
    (dict(method="fef", gamma=0.1), TypeError, r"valid options: \["),
    (dict(mask_id=-1), ValueError, "mask_id"),
])
def test_bad_options_are_rejected_clearly(options, error, match):
  with pytest.raises(error, match=match):
    _sample(**options)


def test_checked_configs_are_reused_but_a_bad_value_of_an_equal_key_is_still_refused():
  # make_config caches what it checked; 1 == True == 1.0 as dict keys, so the cache key
  # must carry each value's type, or `steps=True` would reuse `steps=1`'s config.
  make = fj.samplers.make_config
  assert make("fef", 5, steps=1, window=2) is make("fef", 5, window=2, steps=1)
  with pytest.raises(ValueError, match="steps must be a positive integer"):
    make("fef", 5, steps=True, window=2)
  with pytest.raises(ValueError, match="window must be an integer"):
    make("fef", 5, steps=1, window=2.0)
  with pytest.raises(ValueError, match="steps must be a positive integer"):
    make("fef", 5, steps=[1])  # unhashable: checked without the cache
  assert make("fef", np.int64(5), window=np.int32(3)).window == 3


def test_bad_denoisers_are_rejected_clearly():
  with pytest.raises(ValueError, match=r"float\[N, L, V\]"):
    _sample(logits_fn=lambda t: jnp.zeros((t.shape[0], 4)))
  with pytest.raises(TypeError, match="floating"):
    _sample(logits_fn=lambda t: jnp.zeros((*t.shape, 5), jnp.int32))
  with pytest.raises(ValueError, match="logits_fn failed"):
    _sample(logits_fn=lambda t: jnp.zeros((3,)) + jnp.zeros((4,)))
  with pytest.raises(ValueError, match="no token besides the mask"):
    _sample(logits_fn=lambda t: jnp.zeros((*t.shape, 1)), mask_id=0,
            tokens=jnp.zeros((1, 3), jnp.int32))


@pytest.mark.parametrize("method", ["confidence", "fef"])
def test_nan_logits_raise_and_name_the_rows(method):
  hmm = _hmm()
  def nan_for_row_with_prompt_4(tokens_NxL):
    logits = hmm.logits_fn(tokens_NxL)
    return jnp.where((tokens_NxL[:, :1, None] == 4), jnp.nan, logits)
  tokens = np.full((3, 9), hmm.mask_id)
  tokens[:, 0] = [0, 4, 1]
  with pytest.raises(FloatingPointError, match=r"rows \[1\]"):
    _sample(jnp.asarray(tokens), method=method, logits_fn=nan_for_row_with_prompt_4)


class _CountingDenoiser:
  """A denoiser (hashed by identity) that counts how often JAX traces or formats it
  (a dataclass denoiser's repr formats every parameter array)."""

  def __init__(self, logits_fn):
    self.logits_fn, self.traces, self.reprs = logits_fn, 0, 0

  def __call__(self, tokens_NxL):
    self.traces += 1
    return self.logits_fn(tokens_NxL)

  def __repr__(self):
    self.reprs += 1
    return "_CountingDenoiser()"


@pytest.mark.parametrize("method, options", [("first_hitting", {}), ("fef", dict(window=3))])
def test_repeated_calls_do_not_trace_the_denoiser_again(method, options):
  # A trace of a real model, or formatting its parameters, costs milliseconds: more than
  # a whole sampling run of a small model at batch 1. So validation and compilation
  # happen once per shape, and a warm call never formats the denoiser.
  counting = _CountingDenoiser(_hmm().logits_fn)
  tokens = _prompts()
  _sample(tokens, method=method, logits_fn=counting, **options)
  traced, formatted = counting.traces, counting.reprs
  assert traced >= 1
  for seed in range(3):
    _sample(tokens, jax.random.key(seed), method=method, logits_fn=counting, **options)
  assert (counting.traces, counting.reprs) == (traced, formatted)
  # Another shape is validated and compiled anew.
  wider = _sample(jnp.concatenate([tokens, tokens[:1]]), method=method,
                  logits_fn=counting, **options)
  assert counting.traces > traced
  assert not np.any(np.asarray(wider.tokens) == _hmm().mask_id)


def test_random_sizes_draws_the_step_size_uniformly_from_one_to_twice_the_even_split():
  num, length, vocab_size = 14_000, 8, 3
  # 8 masks left, 2 steps left: the even split is m = 4, so k ~ Uniform{1, ..., 7}.
  (uniform_NxN,) = noise.uniforms(jax.random.split(jax.random.key(0), num), (length + 1,))
  ctx = StepContext(
      eligible_BxL=jnp.ones((num, length), bool), remaining_B=jnp.full((num,), 8),
      steps_left_B=jnp.full((num,), 2), steps_per_block_B=jnp.full((num,), 2),
      log_probs_BxLxV=jnp.zeros((num, length, vocab_size)),
      x0_BxL=jnp.zeros((num, length), jnp.int32), uniform_BxN=uniform_NxN)
  config = fj.samplers.make_config("random_sizes", vocab_size, steps=2)
  sizes = np.asarray(jnp.sum(random_sizes.plan(config, ctx), axis=1))
  assert sizes.min() == 1 and sizes.max() == 7
  _, _, p_value = fj.stats.chi_square_gof(np.bincount(sizes, minlength=8)[1:],
                                          np.full(7, 1 / 7))
  assert p_value > 1e-3


@pytest.mark.parametrize("select, warped", [("random", "one position"),
                                            ("position", "one position"),
                                            ("entropy", "every position")])
def test_first_hitting_warps_only_the_chosen_position_when_the_choice_reads_no_values(
    select, warped, monkeypatch):
  # With a value-free choice the position is chosen first: the step warps and draws
  # [B, V], not the [B, L, V] of every position (the reference stays lean).
  seen = []

  def spy(logits, **kwargs):
    seen.append(logits.shape)
    return warp.warp_log_probs.__wrapped__(logits, **kwargs)

  monkeypatch.setattr(warp, "warp_log_probs", functools.wraps(warp.warp_log_probs)(spy))
  hmm, tokens = _hmm(), _prompts()
  # A new denoiser object, so that the sampler is traced with the spy.
  result = fj.sample(lambda t: hmm.logits_fn(t), tokens, jax.random.key(3), "first_hitting",
                     mask_id=hmm.mask_id, select=select)
  assert not np.any(np.asarray(result.tokens) == hmm.mask_id)
  batch, length = tokens.shape
  expected = (batch, hmm.vocab_size) if warped == "one position" else (
      batch, length, hmm.vocab_size)
  assert seen and all(shape == expected for shape in seen), seen


def test_best_is_top_k_of_one():
  rng = np.random.default_rng(0)
  scores = jnp.asarray(rng.integers(0, 3, (200, 7)).astype(np.float32))  # many ties
  eligible = jnp.asarray(rng.random((200, 7)) < 0.6).at[:, 3].set(True)
  position = np.asarray(selection.best(scores, eligible))
  np.testing.assert_array_equal(
      np.asarray(selection.top_k(scores, eligible, jnp.ones((200,), jnp.int32))),
      np.arange(7)[None, :] == position[:, None])


def test_dilated_order_is_the_bit_reversal_of_each_position():
  for length in (1, 2, 5, 10, 16, 33):
    bits = max(1, (length - 1).bit_length())
    want = [int(format(position, f"0{bits}b")[::-1], 2) for position in range(length)]
    np.testing.assert_array_equal(selection.dilated_order(length), want)
  # Over 64 positions the first 2^m of the order are evenly spread, 64 / 2^m apart.
  positions_in_order = np.argsort(np.asarray(selection.dilated_order(64)))
  for m in range(7):
    gaps = np.diff(np.sort(positions_in_order[:2**m]))
    np.testing.assert_array_equal(gaps, np.full(2**m - 1, 64 // 2**m))


def test_dilated_order_accepts_more_drafts_where_neighbours_depend_on_each_other():
  # In a sticky chain neighbours agree w.p. 0.85 while far-apart positions barely
  # depend on each other, so a round's drafts (each from its marginal) of far-apart
  # positions are accepted more often: more tokens per round, for the same law
  # (tests/test_exactness.py). 512 rows: per-round means are known to ~0.1 tokens,
  # against ~3 and ~6 tokens per round.
  chain = fj.oracles.MarkovChain.sticky(vocab_size=3, length=32, stay_prob=0.85)
  tokens = jnp.full((512, chain.length), chain.mask_id, jnp.int32)
  tokens_per_round = {
      order: float(fj.sample(chain.logits_fn, tokens, jax.random.key(2), "fef",
                             mask_id=chain.mask_id, steps=1, window=8,
                             order=order).stats.tokens_per_round.mean())
      for order in ("left_to_right", "dilated")}
  assert tokens_per_round["dilated"] > 1.5 * tokens_per_round["left_to_right"], (
      tokens_per_round)
