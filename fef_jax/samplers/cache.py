"""FeF's exact context cache (`cache="exact"`): verification rounds over one block of copies.

A round's `W` prefix-revealed copies differ only inside the step's set, which
lies inside the current generation block. With a *block-causal* denoiser (a
position of attention block `b` sees blocks `<= b` only) the logits of block
`b` do not depend on later positions and the keys and values of earlier blocks
do not depend on block `b`. So a round can run the context once, cache it, and
evaluate the `W` copies over the block's `S` positions only: the cost of a
round drops from `W` sequences to `W S / L` of one, with the same targets.

The denoiser must offer the block-local interface (`BlockLocalDenoiser`):
`fef_jax.models.Denoiser` of a `block_causal` transformer without time
conditioning, or `fef_jax.oracles.BlockCausal` around an oracle.

How the sampler uses it (`fef_jax.samplers.loop`):
- Window: the attention block holding the step's eligible positions,
  `[start, start + S)` with `S = denoiser.block_length`. `fef_jax.sample` checks
  that every generation block lies inside one attention block (`check_denoiser`).
- The cache is computed once per attention block: at the first step, by the
  initial call (`encode` of the prompts, which also gives the first drafts), and
  whenever a row's window moves, by one batched `encode` of `2B` rows
  (`refresh`): the current states, whose keys and values before the window stay
  valid for every round of the block, and the inputs of the current draft logits
  (the previous round's accepted-prefix copy), whose logits become the drafts of
  the new block. Those are the drafts the uncached path would use, so both paths
  make the same decisions (up to float round-off).
- Rounds (`evaluator`): one `block_logits` call of the `W` copies' windows
  against the cache; its logits overwrite the window of the draft logits.
- Statistics: `nfe` counts every batched call (a refresh is one call).
  `sequences` counts whole-sequence equivalents: the loop adds up the token
  positions the denoiser evaluated (`L` per full sequence, `S` per copy of a
  window) and reports them divided by `L`, rounded up per row. A refresh counts
  two sequences.
"""
from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from fef_jax import posterior
from fef_jax import speculative


class BlockLocalDenoiser(Protocol):
  """A denoiser that can evaluate copies of one block against a cached context.

  Attributes:
    exact_cache: True when `block_logits` equals `__call__` at the block (the
      denoiser is block-causal); `cache="exact"` refuses any other denoiser.
    block_length: `S`, the attention block length in positions; windows start at
      multiples of it.
  """
  exact_cache: bool
  block_length: int

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    """float[N, L, V] logits of every position."""

  def encode(self, tokens_NxL: jax.Array) -> tuple[jax.Array, Any]:
    """(float[N, L, V] logits as `__call__`, the cache of the `N` states: a pytree
    whose leaves all have `N` as leading axis)."""

  def block_logits(self, cache: Any, tokens_NxCxS: jax.Array,
                   start_N: jax.Array) -> jax.Array:
    """float[N, C, S, V]: logits of positions `start .. start + S - 1` of `C` copies of
    each cached state, the copies holding `tokens_NxCxS` there."""


def check_denoiser(denoiser: Any, block_length: int, mask_id: int, length: int,
                   tokens_BxL: np.ndarray | None) -> None:
  """Checks that `cache="exact"` can run `denoiser` on these tokens exactly.

  Args:
    denoiser: the sampler's `logits_fn`.
    block_length: the sampler's generation block length (masked positions).
    mask_id: the mask token.
    length: `L`, the sequence length.
    tokens_BxL: the concrete tokens, or None under tracing (then the alignment
      of generation blocks is not checked).

  Raises:
    TypeError: the denoiser lacks the block-local interface or an exact cache.
    ValueError: `L` not a multiple of the denoiser's block length, a generation
      block longer than it, or (concrete tokens) a generation block that crosses
      an attention block boundary; the message says what to change.
  """
  missing = [name for name in ("encode", "block_logits", "block_length", "exact_cache")
             if not hasattr(denoiser, name)]
  if missing:
    raise TypeError(f"cache='exact' needs a block-local denoiser (see "
                    f"fef_jax.samplers.cache.BlockLocalDenoiser); {denoiser!r} lacks "
                    f"{missing}")
  if not denoiser.exact_cache:
    raise TypeError(f"cache='exact' needs a denoiser with an exact cache: a block-causal "
                    f"model without time conditioning; {denoiser!r} has none (a "
                    f"bidirectional model's block-local logits are only approximate)")
  span = denoiser.block_length
  if length % span:
    raise ValueError(f"cache='exact': the sequence length {length} must be a multiple of "
                     f"the denoiser's block_length={span}")
  if block_length > span:
    raise ValueError(f"cache='exact': block_length={block_length} exceeds the denoiser's "
                     f"block_length={span}, so a generation block cannot lie inside one "
                     f"attention block")
  if tokens_BxL is None:
    return
  rows, positions = np.nonzero(tokens_BxL == mask_id)
  order = np.cumsum(tokens_BxL == mask_id, axis=1)[rows, positions] - 1
  block, window = order // block_length, positions // span
  crossing = np.flatnonzero((rows[1:] == rows[:-1]) & (block[1:] == block[:-1])
                            & (window[1:] != window[:-1]))
  if crossing.size:
    i = crossing[0]
    raise ValueError(
        f"cache='exact': generation block {block[i]} of row {rows[i]} spans positions in "
        f"attention blocks {window[i]} and {window[i + 1]} (denoiser block_length={span}); "
        f"every block of block_length={block_length} masked positions must lie in one "
        f"attention block: use a block_length dividing {span} and prompts whose length "
        f"is a multiple of {span}")


def window_start(eligible_BxL: jax.Array, span: int) -> jax.Array:
  """int32[B]: start of the attention block holding each row's first eligible position."""
  return (jnp.argmax(eligible_BxL, axis=1) // span * span).astype(jnp.int32)


def encode(denoiser: BlockLocalDenoiser, tokens_BxL: jax.Array,
           mask_id: int) -> tuple[jax.Array, Any, jax.Array]:
  """(float32 logits [B, L, V], the cache of the states, bool[B] NaN/+inf-at-a-mask flags)."""
  return speculative.call_with_extras(denoiser.encode, tokens_BxL, mask_id)


def refresh(denoiser: BlockLocalDenoiser, refresh_B: jax.Array, tokens_BxL: jax.Array,
            draft_tokens_BxL: jax.Array, draft_logits_BxLxV: jax.Array, context: Any,
            mask_id: int) -> tuple[jax.Array, Any, jax.Array]:
  """Enters a new window in the rows of `refresh_B`, with one call of `2B` rows.

  Args:
    denoiser: the block-local denoiser.
    refresh_B: rows whose window moved.
    tokens_BxL: current states: their cache serves every round of the window.
    draft_tokens_BxL: the inputs of the current draft logits: their logits are
      the new drafts (the uncached path's drafts at the new window).
    draft_logits_BxLxV: the current draft logits.
    context: the current cache.
    mask_id: the mask token.

  Returns:
    (draft logits, cache, bool[B] NaN/+inf flags), replaced in the refreshed rows only.
  """
  batch = tokens_BxL.shape[0]
  logits_NxLxV, context_N, bad_N = encode(
      denoiser, jnp.concatenate([tokens_BxL, draft_tokens_BxL]), mask_id)

  def pick(new, old):
    return jnp.where(refresh_B.reshape((batch,) + (1,) * (old.ndim - 1)), new[:batch], old)

  # The cache comes from the current states (rows :B), the drafts from their inputs (B:).
  return (jnp.where(refresh_B[:, None, None], logits_NxLxV[batch:], draft_logits_BxLxV),
          jax.tree.map(pick, context_N, context), bad_N[batch:] & refresh_B)


def evaluator(denoiser: BlockLocalDenoiser, context: Any,
              start_B: jax.Array) -> speculative.CopyEvaluator:
  """A round's evaluation of the copies' window `[start, start + S)` against `context`.

  Each copy counts `S` units (token positions) towards `stats.sequences`.
  """
  span = denoiser.block_length

  def evaluate(copies_BxWxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    window_BxWxS = posterior.span_of(copies_BxWxL, start_B, span)
    return denoiser.block_logits(context, window_BxWxS, start_B), start_B

  return speculative.CopyEvaluator(evaluate, units_per_copy=span)
