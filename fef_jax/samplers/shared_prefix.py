"""FeF's rounds for a block-causal denoiser: one sequence and one attention block per copy.

`cache="prefix"`. A round's `W` copies differ only in which of the round's drafts
they reveal: copy `c` reveals the drafts of targets `0 .. c-1`. When the targets
move forward through the row (each in the same attention block as the one before
it, or a later one), copy `c` agrees, in every attention block before its target's,
with the *drafted state* `R` that reveals all the round's drafts: a later draft
lies in the target's block or after it. A block-causal denoiser's logits at a
position of block `b` read only blocks `<= b`, so the target's logits in copy `c`
are those of copy `c`'s block `b` attending to `R`'s keys and values before it.
So a round runs `R` once (`encode`: `L` positions) and each copy's target block
against its cache (`copy_block_logits`: `S` positions per copy), `L + W S`
positions instead of the `W L` of whole copies, and the targets are the exact
logits, as `cache="exact"`'s are. Unlike `cache="exact"`, a set may span many
attention blocks (a whole answer in one step).

Targets that do not move forward (the order steps back to an earlier block) are
left to the next round (`CopyEvaluator.verifiable`: the round verifies the
longest prefix of its targets whose blocks never decrease). That choice depends on
the targets' positions only, not on the drafts, so the draw stays exact. An order
whose sets move forward in long runs makes long rounds: `order="parity"` (the
even positions left to right, then the odd ones; `selection.parity_order`) steps
back once per set, `left_to_right` never; `dilated` and `random` step back often.

The next drafts are the pivot copy's logits in its target's block and `R`'s
elsewhere. `R` reveals the round's drafts past the pivot too, which were not
all accepted; any draft distribution fixed before the draw keeps the draw exact
(the acceptance test and residual give the target's law whatever `q` is), so
this changes acceptance only. When a round accepts every draft, `R` is the
accepted state and its logits are the drafts the uncached path would use.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fef_jax import speculative


def forward_prefix(positions_BxW: jax.Array, span: int) -> jax.Array:
  """bool[B, W]: the longest prefix of the targets whose attention blocks (of `span`
  positions) never decrease; the first target is always in it."""
  block_BxW = positions_BxW // span
  forward_BxW = jnp.concatenate(
      [jnp.ones_like(block_BxW[:, :1], bool), block_BxW[:, 1:] >= block_BxW[:, :-1]], axis=1)
  return jnp.cumprod(forward_BxW, axis=1).astype(bool)


def evaluator(denoiser: Any, length: int, features: bool = False
              ) -> speculative.CopyEvaluator:
  """A round's evaluation: the drafted state whole, then each copy's target block
  against its keys and values (see the module docstring).

  The span returned is the whole row (offset 0): copy `c`'s block holding its
  target from its own block call, every other position from the drafted state.
  Counts `L` units per round and `S` per copy (token positions). With
  `features`, hidden states in place of logits
  (for a round given the denoiser's `speculative.output_projection`).
  """
  span = denoiser.block_length
  lazy = {"project": False} if features else {}

  def evaluate(copies_BxWxL: jax.Array, drafts_BxL: jax.Array, positions_BxW: jax.Array,
               context: Any) -> tuple[jax.Array, jax.Array, Any]:
    batch, window, _ = copies_BxWxL.shape
    drafted_BxLxF, cache = denoiser.encode(drafts_BxL, **lazy)
    start_BxW = positions_BxW // span * span
    blocks_BxWxS = jnp.take_along_axis(
        copies_BxWxL, start_BxW[..., None] + jnp.arange(span)[None, None, :], axis=2)
    # Every copy against its row's one cache, masked to the keys before its block.
    block_BxWxSxF = denoiser.copy_block_logits(cache, blocks_BxWxS, start_BxW,
                                               **lazy).astype(drafted_BxLxF.dtype)
    position_L = jnp.arange(length)
    in_block_BxWxL = position_L // span == (positions_BxW // span)[..., None]
    spread_BxWxLxF = jnp.take_along_axis(
        block_BxWxSxF, jnp.broadcast_to((position_L % span)[None, None, :, None],
                                        (batch, window, length, 1)), axis=2)
    span_BxWxLxF = jnp.where(in_block_BxWxL[..., None], spread_BxWxLxF,
                             drafted_BxLxF[:, None])
    return span_BxWxLxF, jnp.zeros((batch,), jnp.int32), context

  return speculative.CopyEvaluator(
      evaluate, units_per_copy=span, units_per_round=length,
      verifiable=lambda positions_BxW: forward_prefix(positions_BxW, span))
