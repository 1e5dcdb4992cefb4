"""Samplers project only the rows they read.

A FeF verification round reads the logits of its `W` targets (one per copy) and of
their drafts, out of the `W` copies' `S` (or `L`) positions; a first-hitting step with
a value-free choice reads one position's. For a denoiser that offers its hidden states
and output projection (`features`, `project=False` on its block-local methods, and
`project_hidden`, as `fef_jax.models.Denoiser` does), the samplers carry hidden states
and project those rows only (`2W` instead of `W S`; 1 instead of `L`): the same
decisions, for a fraction of the output projection, which dominates a call for a large
vocabulary.
"""
import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import api
from fef_jax import models
from fef_jax import samplers
from fef_jax.models import spec_head

VOCAB = 11
MASK_ID = VOCAB
LENGTH = 16
BIDIRECTIONAL = models.SpecHeadConfig(
    vocab_size=VOCAB, mask_id=MASK_ID, max_length=LENGTH, d_model=32, num_layers=2,
    num_heads=4, mlp_dim=64, head_layers=1)
PROMPT = 4


def _config(attention, block_length=None):
  return dataclasses.replace(BIDIRECTIONAL, attention=attention, block_length=block_length)


def _denoiser(config, cls=spec_head.SpecHeadDenoiser):
  return cls(spec_head.SpecHeadTransformer(config),
             spec_head.init_params(BIDIRECTIONAL, jax.random.key(0)))


class _LogitsOnly:
  """The same denoiser without `features` and `project_hidden`: rounds get full logits."""

  def __init__(self, denoiser):
    self._denoiser = denoiser

  def __getattr__(self, name):
    if name in ("features", "project_hidden"):
      raise AttributeError(name)
    return getattr(self._denoiser, name)

  def __call__(self, tokens_NxL):
    return self._denoiser(tokens_NxL)


def _tokens(batch, prompt=PROMPT):
  rng = np.random.default_rng(2)
  tokens = np.full((batch, LENGTH), MASK_ID, np.int32)
  tokens[:, :prompt] = rng.integers(0, VOCAB, (batch, prompt))
  return jnp.asarray(tokens)


CASES = [
    # One token per step, the position chosen before the values.
    (("bidirectional", None), dict(method="first_hitting", select="position")),
    (("block_causal", 4), dict(method="first_hitting", select="random", block_length=4)),
    # Whole copies, one set per answer, and several steps with a warp.
    (("bidirectional", None), dict(steps=1, window=4)),
    (("bidirectional", None), dict(steps=3, window=3, top_k=5, order="random")),
    (("bidirectional", None), dict(steps=4, window=4, mode="joint_then_remask")),
    # Head drafts, verified by whole copies.
    (("bidirectional", None), dict(steps=1, window=3, drafter="head")),
    # The exact cache: block-local rounds (blocks of 4), fused rounds (blocks of 2).
    (("block_causal", 4), dict(block_length=4, cache="exact", window=3)),
    (("block_causal", 4), dict(block_length=4, cache="exact", window=1)),
    (("block_causal", 2), dict(block_length=2, cache="exact", window=2)),
    (("block_causal", 2), dict(block_length=1, cache="exact", window=2, order="random")),
    # The approximate cache, refreshed every other round.
    (("bidirectional", None), dict(block_length=4, cache="approximate", window=2,
                                   refresh_every=2)),
]


@pytest.mark.parametrize("model, options", CASES)
def test_projecting_the_read_rows_makes_the_full_logits_decisions(model, options):
  denoiser = _denoiser(_config(*model))
  tokens = _tokens(5)
  options = dict(options)
  method = options.pop("method", "fef")
  run = lambda d: fj.sample(d, tokens, jax.random.key(7), method, mask_id=MASK_ID, **options)
  lazy, full = run(denoiser), run(_LogitsOnly(denoiser))
  agreement = np.mean(np.asarray(lazy.tokens) == np.asarray(full.tokens))
  assert agreement >= 0.999, agreement
  for name in ("nfe", "sequences", "rounds", "tokens", "drafts_examined", "drafts_accepted"):
    np.testing.assert_array_equal(getattr(lazy.stats, name), getattr(full.stats, name), name)


def _projected_rows(denoiser, tokens, method, options):
  """Rows of every product with a vocabulary-sized output in the compiled sampler (the
  projections XLA keeps: one that nothing reads is removed)."""
  config = samplers.make_config(method, MASK_ID, **options)
  text = api._run.lower(*api.split_denoiser(denoiser), tokens, jax.random.key(0),
                        config).compile().as_text()
  shapes = re.findall(r"= f32\[([\d,]+),%d\]\{[\d,]*\} (?:dot|convolution|custom-call)\("
                      % VOCAB, text)
  return {math.prod(int(n) for n in shape.split(",")) for shape in shapes}


@pytest.mark.parametrize("model, method, options, rows_per_state", [
    # One position per step.
    (("bidirectional", None), "first_hitting", dict(select="position"), 1),
    # Whole copies: the W targets' drafts and targets, not W * L rows (and no first call's
    # L rows: the drafts are carried as hidden states).
    (("bidirectional", None), "fef", dict(window=4), 4),
    # Over the cache: not W * S, nor the refresh's or the fused round's next block.
    (("block_causal", 4), "fef", dict(block_length=4, cache="exact", window=3), 3),
    (("block_causal", 2), "fef", dict(block_length=2, cache="exact", window=2), 2),
])
def test_a_sampler_projects_only_the_rows_it_reads(model, method, options, rows_per_state):
  batch = 3
  denoiser = _denoiser(_config(*model))
  assert _projected_rows(denoiser, _tokens(batch), method, options) == {batch * rows_per_state}
  # Without the projection offered, whole logits are computed (the check can fail).
  assert max(_projected_rows(_LogitsOnly(denoiser), _tokens(batch), method, options)) > (
      batch * rows_per_state)


@dataclasses.dataclass(frozen=True, eq=False)
class _NaNFeatures(spec_head.SpecHeadDenoiser):
  """Finite logits from a full call; NaN hidden states in the rounds' copies."""

  def features(self, tokens_NxL):
    return jnp.full(super().features(tokens_NxL).shape, jnp.nan)


@dataclasses.dataclass(frozen=True, eq=False)
class _NaNProjection(spec_head.SpecHeadDenoiser):
  """Finite logits from a full call and finite hidden states; NaN projected rows."""

  def project_hidden(self, hidden_xD):
    return jnp.full(super().project_hidden(hidden_xD).shape, jnp.nan)


@pytest.mark.parametrize("cls, method, options", [
    (_NaNFeatures, "fef", dict(steps=1, window=2)),
    (_NaNFeatures, "first_hitting", dict(select="position")),
    (_NaNProjection, "fef", dict(steps=1, window=2)),
    (_NaNProjection, "fef", dict(block_length=4, cache="exact", window=2)),
    (_NaNProjection, "first_hitting", dict(select="position")),
])
@pytest.mark.parametrize("prompt", [PROMPT, LENGTH - 1])
def test_nan_in_the_rows_a_sampler_projects_is_refused(cls, method, options, prompt):
  # With one masked position, one round: its targets and their drafts are all it projects.
  config = _config("block_causal", 4) if options.get("cache") else _config("bidirectional")
  with pytest.raises(FloatingPointError, match="NaN"):
    fj.sample(_denoiser(config, cls), _tokens(2, prompt), jax.random.key(0), method,
              mask_id=MASK_ID, **options)
