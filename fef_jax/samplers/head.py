"""FeF with a single-pass speculative head (`verifier="head"`): the set drawn from the head's joint.

A head denoiser (`fef_jax.models.spec_head.SpecHeadDenoiser`, or anything with
the `HeadDenoiser` interface) has a bidirectional backbone, whose logits are
the marginals `q`, and a causal head that gives every prefix-conditioned
factor of an ordered set in one pass. FeF uses it as follows
(`fef_jax.samplers.loop.fef_step`):
- Each step runs the backbone once on the current state `xt`: its logits are
  the step's drafts (and score the choice of the set), its hidden states feed
  every round of the step. There is no extra initial call.
- Each verification round runs the head once over the set in rank order, fed
  the committed tokens of the step and the round's drafts (`K` items, `K` the
  generation block length, or `L` without blocks: at least any set's size);
  the targets are the head's conditionals, so the set is an exact draw from
  `prod_j head_j(x^{s_j} | xt, x^{s<j})` in the step's order.
Any `select`, `order`, `mode`, `steps`, `block_length` and warp are supported;
a cache is not (the backbone runs once per step anyway).

With `drafter="head"` the head only drafts: each round it proposes the
`window` targets one after another (`window` head passes, each conditioned on
the drafts before it) and the backbone's prefix-revealed copies verify them
with `min(1, p / q_head)`, so the set is an exact draw of the backbone's prefix
factorization whatever the head (`fef_jax.speculative.verification_round`).
With `cache="exact"` as well, the copies are evaluated over the attention block
against the cache (`fef_jax.samplers.cache`), and the step's backbone pass is
block-local too: `block_hidden` runs the state's window against the cache (one
call of `S` positions instead of `L`); the head reads the window's hidden
states, which a block-causal backbone computes exactly as the full pass does,
and the window's logits replace the drafts there. So the cached path makes the
uncached path's decisions (up to float round-off).

Statistics: `nfe` counts the backbone pass of each step and each head pass
(each is one sequential call), and with `drafter="head"` each round's copies
(and with the cache its first call and refreshes).
`sequences` is counted in layer-positions: a backbone pass is `L * num_layers`
(one whole sequence; `S * num_layers` over the cache), a head pass
`K * head_layers`; the sum is reported in whole sequences, rounded up.
"""
from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from fef_jax import posterior
from fef_jax import speculative

REQUIRED = ("hidden", "head_logits", "head_layers", "num_layers")
# What `drafter="head"` with `cache="exact"` also needs (besides the cache's interface).
REQUIRED_CACHED = REQUIRED + ("block_hidden",)


class HeadDenoiser(Protocol):
  """A denoiser with a causal head (see `fef_jax.models.spec_head`).

  Attributes:
    head_layers: the head's layers; `num_layers`: the backbone's (for the cost).
  """
  head_layers: int
  num_layers: int

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    """float[N, L, V]: the backbone's logits."""

  def hidden(self, tokens_NxL: jax.Array) -> tuple[jax.Array, Any]:
    """(float[N, L, V] logits as `__call__`, the hidden states the head reads)."""

  def head_logits(self, hidden: Any, positions_NxK: jax.Array, values_NxK: jax.Array,
                  valid_NxK: jax.Array, queries_NxW: jax.Array) -> jax.Array:
    """float[N, W, V]: the head's logits of the queried items."""

  def block_hidden(self, cache: Any, tokens_NxCxS: jax.Array,
                   start_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Only for `cache="exact"`: (float[N, C, S, V] logits as `block_logits`, the
    hidden states [N, C, S, D] of the span, as `hidden` gives them there)."""


def check_denoiser(denoiser: Any, option: str = "verifier='head'",
                   cached: bool = False) -> None:
  """Raises TypeError when `denoiser` lacks the `HeadDenoiser` interface (`option`
  names what asked for the head in the message; `cached`: `block_hidden` too)."""
  required = REQUIRED_CACHED if cached else REQUIRED
  missing = [name for name in required if not hasattr(denoiser, name)]
  if missing:
    raise TypeError(f"{option} needs a denoiser with a speculative head (e.g. "
                    f"fef_jax.models.spec_head.SpecHeadDenoiser); "
                    f"{type(denoiser).__name__} lacks {missing}")


def backbone(denoiser: HeadDenoiser, tokens_BxL: jax.Array,
             mask_id: int) -> tuple[jax.Array, Any, jax.Array]:
  """(float32 logits [B, L, V], hidden states, bool[B] NaN/+inf-at-a-mask flags)."""
  return speculative.call_with_extras(denoiser.hidden, tokens_BxL, mask_id)


def window_backbone(denoiser: HeadDenoiser, cache: Any, start_B: jax.Array,
                    tokens_BxL: jax.Array, span: int,
                    mask_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The backbone over each row's window `[start, start + S)` of its state, against
  the state's cache (`block_hidden`, one call of `B` windows).

  Returns:
    (float32 logits [B, S, V] of the window; hidden states [B, L, D]: the
    window's at its positions, zeros elsewhere, so that the head reads them at
    the items' positions (the items lie in the window); bool[B] NaN/+inf-at-a-
    mask flags).
  """
  window_BxS = posterior.span_of(tokens_BxL[:, None], start_B, span)[:, 0]
  logits_Bx1xSxV, hidden_Bx1xSxD = denoiser.block_hidden(cache, window_BxS[:, None], start_B)
  logits_BxSxV = logits_Bx1xSxV[:, 0].astype(jnp.float32)
  hidden_BxSxD = hidden_Bx1xSxD[:, 0]
  batch, length = tokens_BxL.shape
  hidden_BxLxD = posterior.write_span(
      jnp.zeros((batch, length) + hidden_BxSxD.shape[2:], hidden_BxSxD.dtype), hidden_BxSxD,
      start_B)
  bad_B = jnp.any(speculative.bad_masked(logits_BxSxV, window_BxS, mask_id), axis=-1)
  return logits_BxSxV, hidden_BxLxD, bad_B


def evaluator(denoiser: HeadDenoiser, hidden: Any,
              num_items: int) -> speculative.HeadEvaluator:
  """The rounds' head pass over `num_items` items against one step's hidden states.

  Each pass counts `num_items * head_layers` layer-positions towards `stats.sequences`.
  """
  def evaluate(positions_BxK, values_BxK, valid_BxK, queries_BxW):
    return denoiser.head_logits(hidden, positions_BxK, values_BxK, valid_BxK, queries_BxW)

  return speculative.HeadEvaluator(evaluate, num_items=num_items,
                                   units_per_pass=num_items * denoiser.head_layers)
