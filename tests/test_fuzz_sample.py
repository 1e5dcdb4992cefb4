"""Fuzzed `fj.sample` calls: random shapes, token ids, mask ids inside and outside the
vocabulary, every method and option, in and out of range. Each call either returns a
valid result (no mask left, the prompt untouched, consistent statistics) or raises a
`ValueError` / `TypeError` (a `FloatingPointError` for NaN logits) whose message names
the problem; never another exception, a hang or silent garbage."""
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax.samplers import config as sampler_config

# Per option: (values a method may take, values that must be refused).
OPTION_VALUES = {
    "steps": ([None, 1, 2, 5], [0, -1, 1.5]),
    "block_length": ([None, 1, 2, 3, 100], [0]),
    "temperature": ([1.0, 0.0, 0.5], [-1.0, float("nan")]),
    "top_k": ([0, 1, 2], [100, -1]),
    "top_p": ([1.0, 0.5], [0.0, 1.5]),
    "select": (["confidence", "entropy", "position", "random"], ["best"]),
    "order": (["left_to_right", "confidence", "random"], ["sideways"]),
    "window": ([1, 2, 4], [0]),
    "mode": (["commit_set", "joint_then_remask"], ["other"]),
    "cache": (["none"], ["exact", "approximate", "lru"]),
    "refresh_every": ([0], [1, -1]),
    "verifier": (["copies"], ["head", "tree"]),
    "drafter": (["marginals"], ["head", "oracle"]),
    "threshold": ([0.9, 0.5], [0.0, 2.0]),
    "factor": ([None, 1.0], [-1.0]),
    "gamma": ([0.1, 0.0], [-1.0]),
    "schedule": (["linear", "cosine"], ["bogus"]),
}


def _rarely(draw) -> bool:
  """True one draw in ten (not at 0: Hypothesis favours the smallest value)."""
  return draw(st.integers(0, 9)) == 7


def _table_logits(table_VxV, nan_row, tokens_NxL):
  """A deterministic denoiser: logits from each position's token and its left neighbour."""
  vocab = table_VxV.shape[1]
  left = jnp.concatenate([tokens_NxL[:, :1], tokens_NxL[:, :-1]], axis=1)
  logits = table_VxV[jnp.clip(tokens_NxL, 0, vocab - 1)] + table_VxV[jnp.clip(left, 0, vocab - 1)]
  if nan_row is not None:
    logits = jnp.where((jnp.arange(tokens_NxL.shape[0]) == nan_row)[:, None, None],
                       jnp.nan, logits)
  return logits


@functools.lru_cache(maxsize=None)
def _denoiser(vocab, nan_row):
  table = jax.random.normal(jax.random.key(vocab), (vocab, vocab)) * 2.0
  return functools.partial(_table_logits, table, nan_row)


@st.composite
def _requests(draw):
  """(tokens, vocab, mask_id, method, options, nan_row): mostly valid requests, each
  part sometimes wrong (an id out of range, a row without masks, an unknown method,
  an option the method does not take or out of range, NaN logits)."""
  batch = draw(st.integers(1, 3))
  length = draw(st.integers(1, 6))
  vocab = draw(st.integers(1, 5))
  mask_id = draw(st.sampled_from([vocab, vocab - 1, vocab + 3]))
  if _rarely(draw):
    mask_id = -1
  low, high = (-1, vocab + 1) if _rarely(draw) else (0, vocab - 1)
  tokens = np.asarray(draw(st.lists(st.lists(st.integers(low, high), min_size=length,
                                             max_size=length),
                                    min_size=batch, max_size=batch)))
  masked = np.asarray(draw(st.lists(st.lists(st.booleans(), min_size=length,
                                             max_size=length),
                                    min_size=batch, max_size=batch)))
  if not _rarely(draw):
    masked[:, -1] = True  # mostly something to sample in every row
  tokens = np.where(masked, mask_id, tokens).astype(np.int32)
  # FeF first: Hypothesis favours the first value, and FeF has the most options and paths.
  methods = ("fef",) + tuple(m for m in sampler_config.METHODS if m != "fef")
  method = "greedy" if _rarely(draw) else draw(st.sampled_from(methods))
  allowed = sampler_config.METHOD_OPTIONS.get(method, ())
  names = draw(st.lists(st.sampled_from(sorted(OPTION_VALUES)), max_size=4, unique=True))
  names = [n for n in names if n in allowed or _rarely(draw)]
  options = {}
  for name in names:
    valid, invalid = OPTION_VALUES[name]
    options[name] = draw(st.sampled_from(invalid if _rarely(draw) else valid))
  nan_row = 0 if _rarely(draw) else None
  return tokens, vocab, mask_id, method, options, nan_row


@hypothesis.settings(max_examples=120, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(_requests())
def test_fuzzed_requests_give_a_valid_result_or_a_clear_error(request):
  tokens, vocab, mask_id, method, options, nan_row = request
  try:
    result = fj.sample(_denoiser(vocab, nan_row), tokens, jax.random.key(0), method,
                       mask_id=mask_id, **options)
  except (ValueError, TypeError) as error:
    assert str(error), "an error without a message"
    hypothesis.event(f"refused: {type(error).__name__}: {str(error)[:60]}")
    return
  except FloatingPointError as error:
    assert nan_row is not None and "NaN" in str(error)
    hypothesis.event("refused: NaN logits")
    return
  hypothesis.event(f"sampled: {method}")
  out = np.asarray(result.tokens)
  assert out.shape == tokens.shape and out.dtype == np.int32
  masked = tokens == mask_id
  assert not np.any(out == mask_id)
  np.testing.assert_array_equal(out[~masked], tokens[~masked])
  assert np.all((out[masked] >= 0) & (out[masked] < vocab))
  stats = jax.device_get(result.stats)
  np.testing.assert_array_equal(stats.tokens, masked.sum(axis=1))
  assert np.all(stats.nfe >= 1) and np.all(stats.rounds >= 1)
  assert np.all(stats.sequences >= 1)
  assert np.all(stats.drafts_accepted <= stats.drafts_examined)
