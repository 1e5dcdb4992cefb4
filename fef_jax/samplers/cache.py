"""FeF's context caches: verification rounds over one window of copies against cached keys.

A round's `W` prefix-revealed copies differ only inside the step's set, which
lies inside the current generation block. So a round can run the context (the
positions outside a window holding the block) once, cache its keys and values,
and evaluate the `W` copies over the window's `S` positions only: the cost of a
round drops from `W` sequences to `W S / L` of one. Two modes, named for what
they guarantee:

- `cache="exact"`: for a *block-causal* denoiser (a position of attention
  block `b` sees blocks `<= b` only), the logits of block `b` do not depend on
  later positions and the keys and values of earlier blocks do not depend on
  block `b`, so the window's logits equal the uncached ones: same targets, same
  exactness. The window is the attention block holding the step's eligible
  positions, `[start, start + S)`, `S = denoiser.block_length`;
  `fef_jax.sample` checks that every generation block lies inside one attention
  block (`check_denoiser`).
- `cache="approximate"`: for a *bidirectional* denoiser (LLaDA, Dream, our
  bidirectional transformer), the "dual cache" of Fast-dLLM: the window
  `[start, start + S)` starts at the generation block's first masked position
  (`S` = the sampler's `block_length`), and the copies' window attends to
  cached keys and values of the positions on both sides of it. Those were
  computed from the cached state, whose window holds the state's tokens, not
  the copy's revealed drafts: the targets are approximate (exact for the
  copy that reveals nothing, right after a refresh, and for one-layer
  models), so the samples are no longer exact draws from the prefix
  factorization. The context is refreshed on entering a block and, with
  `refresh_every=r`, before every `r`-th round against the same context.
  `fef_jax.eval.compare` measures what it costs in accuracy.

The denoiser must offer the block-local interface (`BlockLocalDenoiser`):
`fef_jax.models.Denoiser` (block-causal for `exact`), the imported LLaDA/Dream
denoisers (`approximate` only), or `fef_jax.oracles.BlockCausal`.

How the sampler uses it (`fef_jax.samplers.loop`):
- The cache (a `Context`: the denoiser's cache, the window start, and the
  rounds run against it) is computed by the initial call (`encode` of the
  prompts, which also gives the first drafts), and whenever a row's window
  moves (`refresh`). Exact mode needs the current states' keys and values
  before the new window (they stay valid for every round of the block) and, as
  the new block's drafts, the logits of the inputs of the current draft logits
  (the previous round's accepted-prefix copy): the drafts the uncached path
  would use, so both paths make the same decisions (up to float round-off).
  When the window moves to the next attention block (the usual case) and the
  denoiser offers `extend`, one block-local call does both: two copies of the
  span from the old window's start to the new window's end (`2S` positions),
  the state's (whose keys and values of the old window are written into the
  cache; the cache before it was already the state's, since a block-causal
  position depends on earlier blocks only and those are decided) and the
  drafts' input's (whose logits at the new window are the drafts): `4S`
  positions per row instead of `2L`. Otherwise (a window that skips a fully
  revealed attention block, or no `extend`) it re-encodes `2B` whole rows, the
  states and the drafts' inputs. Approximate mode encodes the `B` current
  states only, and their logits are the new drafts (any function of revealed
  tokens is a valid draft source).
- Rounds (`evaluator`): one `block_logits` call of the `W` copies' windows
  against the cache; its logits overwrite the window of the draft logits (for a
  denoiser that offers its output projection the calls return hidden states,
  the drafts are carried as hidden states and a round projects its `W` targets
  only, see `speculative.output_projection`). In
  exact mode with marginal drafts (`fused_rounds`) a round instead evaluates
  `[start - S, start + 2S)`: the decided block before the window
  goes into the cache and the block after it gets the last copy's logits, the
  next block's drafts, so moving to the next block needs no refresh call (one
  call per round and none per block; used for blocks of 1-2 positions, where
  it costs no more positions). The block before the window is the same in
  every copy, and only the last copy's view of the block after it is read, so
  the round runs `extend_shared`, which evaluates both once beside the copies'
  windows: `S + W S + S` positions.
- Statistics: `nfe` counts every batched call (a refresh is one call, so a
  round that refreshes costs two sequential calls). `sequences` counts
  whole-sequence equivalents: the loop adds up the token positions the
  denoiser evaluated (`L` per full sequence, `S` per copy of a window) and
  reports them divided by `L`, rounded up per row.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fef_jax import posterior
from fef_jax import speculative
from fef_jax.samplers.config import SamplerConfig
from fef_jax.types import SampleStats


class BlockLocalDenoiser(Protocol):
  """A denoiser that can evaluate copies of one window against a cached context.

  Attributes:
    exact_cache: True when `block_logits` equals `__call__` at an attention
      block (the denoiser is block-causal); `cache="exact"` needs it.
    block_length: `S`, the attention block length in positions (windows of
      `cache="exact"` start at multiples of it); None for a bidirectional
      denoiser.
  """
  exact_cache: bool
  block_length: Optional[int]

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    """float[N, L, V] logits of every position."""

  def encode(self, tokens_NxL: jax.Array) -> tuple[jax.Array, Any]:
    """(float[N, L, V] logits as `__call__`, the cache of the `N` states: a pytree
    whose leaves all have `N` as leading axis)."""

  def block_logits(self, cache: Any, tokens_NxCxS: jax.Array,
                   start_N: jax.Array) -> jax.Array:
    """float[N, C, S, V]: logits of positions `start .. start + S - 1` of `C` copies of
    each cached state, the copies holding `tokens_NxCxS` there. A denoiser that
    offers `project_hidden` also takes `project=False` here and in `encode`,
    `extend` and `extend_shared`, and then returns the hidden states those
    logits are projected from (see `fef_jax.speculative.output_projection`)."""

  def copy_block_logits(self, cache: Any, tokens_NxCxS: jax.Array,
                        start_NxC: jax.Array) -> jax.Array:
    """Optional (`cache="prefix"`): `block_logits` with a span start per copy, all
    copies of a row against its one cache (`fef_jax.samplers.shared_prefix`)."""

  def extend(self, cache: Any, tokens_NxCxS: jax.Array,
             start_N: jax.Array) -> tuple[jax.Array, Any]:
    """Optional (exact mode): (`block_logits`, the cache with the span's entries set
    to copy 0's), so that a refresh runs two spans instead of two whole rows."""

  def extend_shared(self, cache: Any, shared_NxP: jax.Array, tokens_NxCxT: jax.Array,
                    shared_start_N: jax.Array, start_N: jax.Array,
                    tail_NxR: jax.Array | None = None, tail_start_N: jax.Array | None = None,
                    tail_copy: int = 0) -> tuple[jax.Array, jax.Array | None, Any]:
    """Optional (exact mode): `extend` of copies that all hold `shared_NxP` at
    `[shared_start, shared_start + P)`, evaluated once (float[N, C, T, V] logits of
    the copies' `T` positions; the logits float[N, R, V] of an optional tail of
    positions every copy holds, evaluated once as copy `tail_copy` sees them, or
    None; the cache with the shared range and copy 0's set to copy 0's), so that a
    fused round evaluates the decided block before its window, and the block after
    it, once, not per copy (see `fef_jax.models.Transformer.extend_shared`)."""


@flax.struct.dataclass
class Context:
  """What cached rounds evaluate against (carried by the loop and the rounds).

  Attributes:
    cache: the denoiser's cache of each row's state at its last refresh.
    start_B: int32 start of the window the cache serves.
    rounds_B: int32 rounds run against the cache since its refresh.
  """
  cache: Any
  start_B: jax.Array
  rounds_B: jax.Array


def check_denoiser(denoiser: Any, mode: str, block_length: int, mask_id: int, length: int,
                   tokens_BxL: np.ndarray | None) -> None:
  """Checks that `cache=mode` can run `denoiser` on these tokens.

  Args:
    denoiser: the sampler's `logits_fn`.
    mode: `"exact"`, `"approximate"` or `"prefix"` (`fef_jax.samplers.shared_prefix`:
      as exact, with `copy_block_logits` in place of the generation blocks'
      checks, since its sets may span any number of attention blocks).
    block_length: the sampler's generation block length (masked positions; not
      read for `"prefix"`).
    mask_id: the mask token.
    length: `L`, the sequence length.
    tokens_BxL: the concrete tokens, or None under tracing (then the placement
      of generation blocks is not checked).

  Raises:
    TypeError: the denoiser lacks the block-local interface, or (exact, prefix)
      an exact cache.
    ValueError: exact and prefix: `L` not a multiple of the denoiser's block
      length; exact: a
      generation block longer than it, or (concrete tokens) a generation block
      that crosses an attention block boundary. Approximate: `block_length > L`,
      or (concrete tokens) a generation block whose masked positions span more
      than `block_length` positions (masks that are not contiguous). The
      message says what to change.
  """
  needed = {"approximate": ("encode", "block_logits"),
            "exact": ("encode", "block_logits", "block_length", "exact_cache"),
            "prefix": ("encode", "copy_block_logits", "block_length", "exact_cache")}[mode]
  missing = [name for name in needed if not hasattr(denoiser, name)]
  if missing:
    raise TypeError(f"cache={mode!r} needs a block-local denoiser (see "
                    f"fef_jax.samplers.cache.BlockLocalDenoiser); {denoiser!r} lacks "
                    f"{missing}")
  if mode == "approximate":
    if block_length > length:
      raise ValueError(f"cache='approximate': block_length={block_length} exceeds the "
                       f"sequence length {length}")
    _check_blocks(tokens_BxL, mask_id, block_length, None, "approximate",
        f"spans more than block_length={block_length} positions; the window of the "
        f"approximate cache holds block_length positions from the block's first mask, "
        f"so the masks of a block must be contiguous: use cache='none' for scattered masks")
    return
  if not denoiser.exact_cache:
    raise TypeError(f"cache={mode!r} needs a denoiser with an exact cache: a block-causal "
                    f"model without time conditioning; {denoiser!r} has none (a "
                    f"bidirectional model's block-local logits are only approximate: "
                    f"cache='approximate')")
  span = denoiser.block_length
  if length % span:
    raise ValueError(f"cache={mode!r}: the sequence length {length} must be a multiple of "
                     f"the denoiser's block_length={span}")
  if mode == "prefix":
    return
  if block_length > span:
    raise ValueError(f"cache='exact': block_length={block_length} exceeds the denoiser's "
                     f"block_length={span}, so a generation block cannot lie inside one "
                     f"attention block")
  _check_blocks(tokens_BxL, mask_id, block_length, span, "exact",
      f"crosses an attention block boundary (denoiser block_length={span}); every block "
      f"of block_length={block_length} masked positions must lie in one attention block: "
      f"use a block_length dividing {span} and prompts whose length is a multiple of {span}")


def _check_blocks(tokens_BxL: np.ndarray | None, mask_id: int, block_length: int,
                  span: int | None, mode: str, problem: str) -> None:
  """Raises ValueError naming the first generation block whose masked positions do not
  all lie in its first position's attention block of `span` positions (`span` None:
  within `block_length` positions of it)."""
  if tokens_BxL is None:
    return
  masked_BxL = np.asarray(tokens_BxL == mask_id)
  if masked_BxL.size <= _MEMO_POSITIONS:
    bad = _memo_misplaced_block(masked_BxL.shape, masked_BxL.tobytes(), block_length, span)
  else:
    bad = _misplaced_block(masked_BxL, block_length, span)
  if bad is not None:
    row, block, first, position = bad
    raise ValueError(f"cache={mode!r}: generation block {block} of row {row} "
                     f"(positions {first}..{position}) {problem}")


# Batches up to this many positions have each mask layout checked once: prompts of one
# layout recur, and at batch 1 the check's ~20 us, spent while the runtime's threads
# idle, cost ~0.1 ms of a 1.5 ms answer on a 2-core CPU (BENCHMARKS.md).
_MEMO_POSITIONS = 1 << 14


@functools.lru_cache(maxsize=256)
def _memo_misplaced_block(shape: tuple[int, ...], masked_bytes: bytes, block_length: int,
                          span: int | None) -> tuple[int, int, int, int] | None:
  return _misplaced_block(np.frombuffer(masked_bytes, bool).reshape(shape), block_length,
                          span)


def _misplaced_block(masked_BxL: np.ndarray, block_length: int, span: int | None
                     ) -> tuple[int, int, int, int] | None:
  """(row, generation block, its first masked position, the offending position) of the
  first misplaced masked position (see `_check_blocks`), or None."""
  rows, positions = np.nonzero(masked_BxL)
  block = (np.cumsum(masked_BxL, axis=1)[rows, positions] - 1) // block_length
  starts = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (block[1:] != block[:-1])])
  first = np.repeat(positions[starts], np.diff(np.r_[starts, rows.size]))
  if span is None:
    outside = positions - first >= block_length
  else:
    outside = positions // span != first // span
  bad = np.flatnonzero(outside)
  if not bad.size:
    return None
  i = bad[0]
  return int(rows[i]), int(block[i]), int(first[i]), int(positions[i])


def window_start(mode: str, in_block_BxL: jax.Array, span: int) -> jax.Array:
  """int32[B]: each row's window start for the positions of its generation block.

  Exact: the attention block holding the block's first position. Approximate:
  the block's first position, moved left so that the window ends by `L`.
  """
  first_B = jnp.argmax(in_block_BxL, axis=1)
  if mode == "exact":
    return (first_B // span * span).astype(jnp.int32)
  return jnp.minimum(first_B, in_block_BxL.shape[1] - span).astype(jnp.int32)


def window_length(config: SamplerConfig, denoiser: BlockLocalDenoiser) -> int:
  """`S`: the denoiser's attention block (exact) or the generation block (approximate)."""
  return denoiser.block_length if config.cache == "exact" else config.block_length


def initial(denoiser: BlockLocalDenoiser, config: SamplerConfig, tokens_BxL: jax.Array,
            in_block_BxL: jax.Array, features: bool = False
            ) -> tuple[jax.Array, Context, jax.Array]:
  """The sampler's first call: (float32 logits [B, L, V], or with `features` the
  hidden states they are projected from, see `speculative.output_projection`; the
  `Context` of the first generation block's windows (`in_block_BxL`: its
  positions); bool[B] NaN/+inf-at-a-mask flags)."""
  features_BxLxF, cache, bad_B = speculative.call_with_extras(
      functools.partial(denoiser.encode, **_hidden_states(features)), tokens_BxL,
      config.mask_id, features)
  start_B = window_start(config.cache, in_block_BxL, window_length(config, denoiser))
  return features_BxLxF, Context(cache, start_B, jnp.zeros_like(start_B)), bad_B


def _hidden_states(features: bool) -> dict[str, bool]:
  """The keyword arguments that make a block-local pass (`encode`, `block_logits`,
  `extend`, `extend_shared`) return hidden states instead of logits, with `features`."""
  return {"project": False} if features else {}


def refresh(denoiser: BlockLocalDenoiser, config: SamplerConfig, refresh_B: jax.Array,
            start_B: jax.Array, tokens_BxL: jax.Array, draft_tokens_BxL: jax.Array | None,
            draft_features_BxLxF: jax.Array, context: Context, stats: SampleStats,
            bad_logits_B: jax.Array, units_per_position: int = 1, features: bool = False
            ) -> tuple[jax.Array, Context, SampleStats, jax.Array]:
  """Re-encodes the rows of `refresh_B` for windows starting at `start_B`, in one call.

  The call is skipped (`lax.cond`) when no row needs it. With `fused_rounds` a
  row that moves to the next attention block needs none: its rounds already
  moved the cache and drafted the new window, so only its window start moves.

  Args:
    denoiser: the block-local denoiser.
    config: the sampler config (`cache` says the mode).
    refresh_B: rows to refresh.
    start_B: their new window starts.
    tokens_BxL: current states: their cache serves the window's rounds.
    draft_tokens_BxL: exact mode: the inputs of the current draft logits, whose
      logits become the drafts (the uncached path's drafts at the new window);
      None in approximate mode, where the drafts are the states' own logits.
    draft_features_BxLxF: the current draft logits (hidden states with
      `features`).
    context: the current `Context`.
    stats: running statistics; each refreshed row gets one call and the token
      positions encoded for it (`2L` in exact mode, `L` in approximate mode),
      times `units_per_position`.
    bad_logits_B: running NaN/+inf flags.
    units_per_position: what one encoded position adds to `stats.sequences`
      (the backbone's layers where the loop counts layer-positions).
    features: whether the drafts are hidden states (see `initial`).

  Returns:
    (draft features, `Context` with the rounds reset, stats, NaN/+inf flags),
    changed in the refreshed rows only. The call evaluates `2B` whole rows in
    exact mode (or, moving to the next attention block with `extend`, `2B`
    spans of `2S` positions) and `B` whole rows in approximate mode.
  """
  batch, length = tokens_BxL.shape
  span = window_length(config, denoiser)
  fused = fused_rounds(config, denoiser, length)
  if fused:
    # Fused rounds already wrote the old window's keys and values and drafted the new
    # window: a row entering the next attention block only moves its window (no call,
    # and no `lax.cond`, whose operands, the cache among them, would be copied).
    follows_B = refresh_B & (start_B == context.start_B + span)
    context = context.replace(start_B=jnp.where(follows_B, start_B, context.start_B),
                              rounds_B=jnp.where(follows_B, 0, context.rounds_B))
    refresh_B = refresh_B & ~follows_B
  inputs_NxL = (tokens_BxL if draft_tokens_BxL is None
                else jnp.concatenate([tokens_BxL, draft_tokens_BxL]))
  units_per_row = inputs_NxL.shape[0] // batch * length * units_per_position

  def pick(new, old):
    return jnp.where(refresh_B.reshape((batch,) + (1,) * (old.ndim - 1)), new[:batch], old)

  def finish(draft_features_BxLxF, cache, context, stats, bad_B, units):
    new_context = Context(jax.tree.map(pick, cache, context.cache),
                          jnp.where(refresh_B, start_B, context.start_B),
                          jnp.where(refresh_B, 0, context.rounds_B))
    return draft_features_BxLxF, new_context, stats.add_calls(refresh_B, units=units), bad_B

  def encode_rows(draft_features_BxLxF, context, stats, bad_logits_B):
    features_NxLxF, cache_N, bad_N = speculative.call_with_extras(
        functools.partial(denoiser.encode, **_hidden_states(features)), inputs_NxL,
        config.mask_id, features)
    # The cache comes from the current states (rows :B), the drafts from the last B rows.
    return finish(
        jnp.where(refresh_B[:, None, None],
                  features_NxLxF[-batch:].astype(draft_features_BxLxF.dtype),
                  draft_features_BxLxF),
        cache_N, context, stats, bad_logits_B | (bad_N[-batch:] & refresh_B), units_per_row)

  if (fused or draft_tokens_BxL is None or not hasattr(denoiser, "extend")
      or 2 * span > length):
    run = encode_rows
  else:
    def extend_spans(draft_features_BxLxF, context, stats, bad_logits_B):
      old_start_B = context.start_B
      inputs_Bx2xL = jnp.stack([tokens_BxL, draft_tokens_BxL], axis=1)
      span_Bx2x2S = posterior.span_of(inputs_Bx2xL, old_start_B, 2 * span)
      out_Bx2x2SxF, cache = denoiser.extend(context.cache, span_Bx2x2S, old_start_B,
                                            **_hidden_states(features))
      drafts_BxSxF = out_Bx2x2SxF[:, 1, span:].astype(draft_features_BxLxF.dtype)
      bad_B = jnp.any(speculative.bad_features(drafts_BxSxF, span_Bx2x2S[:, 1, span:],
                                               config.mask_id, features), axis=-1)
      return finish(
          jnp.where(refresh_B[:, None, None],
                    posterior.write_span(draft_features_BxLxF, drafts_BxSxF, start_B),
                    draft_features_BxLxF),
          cache, context, stats, bad_logits_B | (bad_B & refresh_B),
          2 * 2 * span * units_per_position)

    def run(draft_features_BxLxF, context, stats, bad_logits_B):
      # The span holds both windows only when the new one follows the old one.
      adjacent = jnp.all(~refresh_B | (start_B == context.start_B + span))
      return jax.lax.cond(adjacent, extend_spans, encode_rows,
                          draft_features_BxLxF, context, stats, bad_logits_B)

  return jax.lax.cond(jnp.any(refresh_B), run, lambda *carry: carry,
                      draft_features_BxLxF, context, stats, bad_logits_B)


def fused_rounds(config: SamplerConfig, denoiser: BlockLocalDenoiser, length: int) -> bool:
  """Whether exact-cache rounds also move the cache forward, so that entering the next
  attention block needs no refresh call.

  Such a round evaluates `[start - S, start + 2S)` with `extend_shared`: the
  block before the window (decided, the same in every copy, so evaluated once:
  its keys and values, the state's, go into the cache), each copy's window (the
  targets), and the block after it once, as the last copy sees it (its logits
  are the next block's drafts: they are read only after a round that decides
  the window's set, whose pivot is then the copy of the last target, which the
  last copy repeats, `CopyEvaluator.shared_tail`; so where fewer targets than
  copies remain, they see every target but the last, while uncached rounds
  draft from a copy that reveals them all). A window in the first block has no
  block before it and shares the block after the next one instead, which no
  copy sees; the last window has no block after it. One call fewer per block,
  for `2S` more positions per round. A block takes at least `ceil(S / W)`
  rounds and the refresh it saves evaluates `4S` positions. It is used for
  `W ceil(S / W) <= 2` (blocks of 1 or 2 positions, where a refresh per block
  would double the calls), where a block's rounds add at most the `4S`
  positions the refresh would evaluate, in exact mode with marginal drafts,
  when the denoiser offers `extend_shared` and `L >= 3S`.
  Head drafts read the cache before their rounds, so they keep the refresh.
  """
  span = window_length(config, denoiser)
  return (config.cache == "exact" and config.drafter == "marginals"
          and hasattr(denoiser, "extend_shared") and 3 * span <= length
          and fusing_pays(config.window, span))


def fusing_pays(window: int, span: int) -> bool:
  """Whether exact-cache rounds of `window` copies over blocks of `span` positions are
  fused (see `fused_rounds`): `window * ceil(span / window) <= 2`."""
  return window * -(-span // window) <= 2


def evaluator(denoiser: BlockLocalDenoiser, config: SamplerConfig, length: int,
              units_per_position: int = 1, features: bool = False
              ) -> speculative.CopyEvaluator:
  """A round's evaluation of the copies' window `[start, start + S)` against the context
  (with `fused_rounds`, which also extends the cache, also the block before the
  window and the block after it, each once for all copies, and the span returned
  is `[start, start + 2S)`, or `[start - S, start + S)` for the last window).

  Each copy counts `S * units_per_position` units (token positions, or
  layer-positions; fused: also `2S` per round) towards `stats.sequences`. With
  `cache="approximate"` and `refresh_every=r > 0`, a round of a row that has
  run `r` rounds against its context first re-encodes its state (one more
  call, `L` units), and the state's logits become the round's drafts. With
  `features`, the evaluation (and a refresh's drafts) are the denoiser's hidden
  states, for a round given its `speculative.output_projection`.
  """
  span = window_length(config, denoiser)
  fused = fused_rounds(config, denoiser, length)
  lazy = _hidden_states(features)

  def evaluate(copies_BxWxL: jax.Array, drafts_BxL: jax.Array, positions_BxW: jax.Array,
               context: Context) -> tuple[jax.Array, jax.Array, Context]:
    del drafts_BxL, positions_BxW  # the copies' window holds every target
    window_BxWxS = posterior.span_of(copies_BxWxL, context.start_B, span)
    if not fused:
      return (denoiser.block_logits(context.cache, window_BxWxS, context.start_B, **lazy),
              context.start_B, context)
    # Exact windows are attention blocks and L is a multiple of S: the window fits.
    start_B = context.start_B
    state_Bx1xL = copies_BxWxL[:, :1]
    # The decided block before the window, which every copy holds, is evaluated once;
    # a window in the first block has none and shares the block after the next one,
    # which no copy sees.
    shared_start_B = jnp.where(start_B >= span, start_B - span, start_B + 2 * span)
    # The next block's drafts are read only after a round that decides the window's
    # set, from the copy of its last target, which the last copy repeats: the next
    # block (the tail) is evaluated once, as the last copy sees it. The last window has
    # no next block: its tail repeats the block before it, and its (unspecified)
    # logits land on the drafts of decided positions.
    last_B = start_B + 2 * span > length
    offset_B = jnp.where(last_B, start_B - span, start_B)
    tail_start_B = jnp.where(last_B, start_B - span, start_B + span)
    window_BxWxSxF, tail_BxSxF, cache = denoiser.extend_shared(
        context.cache, posterior.span_of(state_Bx1xL, shared_start_B, span)[:, 0],
        window_BxWxS, shared_start_B, start_B,
        posterior.span_of(state_Bx1xL, tail_start_B, span)[:, 0], tail_start_B,
        copies_BxWxL.shape[1] - 1, **lazy)
    # The span [offset, offset + 2S): [window, tail], or [tail, window] in the last
    # block. One slice of [tail, window, tail], not a select of two joins: on a 2-core
    # CPU the three ops, ready at once, hand a round's work to the other core
    # (BENCHMARKS.md, "Where the time goes").
    tail_BxWxSxF = jnp.broadcast_to(tail_BxSxF[:, None], window_BxWxSxF.shape)
    span_BxWx2SxF = jax.vmap(lambda x, o: jax.lax.dynamic_slice_in_dim(x, o, 2 * span, axis=1))(
        jnp.concatenate([tail_BxWxSxF, window_BxWxSxF, tail_BxWxSxF], axis=2),
        jnp.where(last_B, 0, span))
    return span_BxWx2SxF, offset_B, context.replace(cache=cache)

  def prepare(state: speculative.SpeculativeState,
              active_B: jax.Array) -> speculative.SpeculativeState:
    due_B = active_B & (state.context.rounds_B >= config.refresh_every)
    draft_features_BxLxF, context, stats, bad_B = refresh(
        denoiser, config, due_B, state.context.start_B, state.tokens_BxL, None,
        state.draft_features_BxLxF, state.context, state.stats, state.bad_logits_B,
        units_per_position, features)
    context = context.replace(rounds_B=context.rounds_B + active_B.astype(jnp.int32))
    return state.replace(draft_features_BxLxF=draft_features_BxLxF, context=context,
                         stats=stats, bad_logits_B=bad_B)

  refreshing = config.cache == "approximate" and config.refresh_every > 0
  copy_blocks, round_blocks = (1, 2) if fused else (1, 0)
  return speculative.CopyEvaluator(evaluate,
                                   units_per_copy=copy_blocks * span * units_per_position,
                                   units_per_round=round_blocks * span * units_per_position,
                                   prepare=prepare if refreshing else None,
                                   shared_tail=fused)
