"""Speculative verification of one denoising step's ordered set (FeF-DLLM).

Each round, for every row:
  1. draft `d_i ~ q_i` independently at every position, `q` being the warped
     *draft logits*: the denoiser's output on a state whose revealed tokens are
     a function of the current state (the previous round's copy whose prefix
     was accepted), so drafting costs no extra call;
  2. verify the next `W` undecided set positions in one batched call of `W`
     prefix-revealed copies (copy `c` reveals the `c` drafts before target `c`);
  3. accept draft `c` while `u_c < p_c(d_c) / q_c(d_c)`; at the first rejection
     draw that position from the residual `norm(max(p_c - q_c, 0))`;
  4. commit the accepted drafts (and the residual draw), re-mask the rest.
Rounds run in a `lax.while_loop` until every row's set is decided. Each
committed token is an exact draw from its prefix-conditioned factor, whatever
the drafts, so the set is an exact draw from `prod_j p(x^{s_j} | xt, x^{s<j})`.

A `CopyEvaluator` says how step 2 evaluates the copies: by default the
denoiser runs on the `W` whole sequences; the sampler's caches
(`fef_jax.samplers.cache`) evaluate only the span of positions where the copies
differ, against cached keys and values of the rest (carried in
`SpeculativeState.context`, and optionally refreshed before a round by the
evaluator's `prepare`). The round only needs the targets (inside the span) and
the next drafts (the span is written into the previous draft logits), so with
an exact cache both evaluators give the same round. For a denoiser that offers
its output projection (`output_projection`) the carried drafts and the copies'
span are hidden states, and a round projects `2W` rows (its targets' drafts and
its targets) instead of its copies' `W * S`.

A `HeadEvaluator` given as `drafter` replaces step 1 instead: the head drafts
the round's `W` targets one after another, `d_c ~ q_c(. | xt, committed, d_<c)`,
and the acceptance ratio and residual use that `q_c`. This is standard
speculative sampling with a sequential draft model: still an exact draw of the
copies' prefix factorization, whatever the head.

A `HeadEvaluator` as the denoiser replaces step 2 by one pass of a causal head
(`fef_jax.models.spec_head`) over the set in rank order, fed the committed
values and this round's drafts: item `r` is the target `p(x^{s_r} | xt, x^{s<r})`
of the head, so the set is an exact draw from the head's own joint. Its drafts
are the step's backbone marginals throughout the step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp

from fef_jax import noise
from fef_jax import posterior
from fef_jax.types import SampleStats

LogitsFn = Callable[[jax.Array], jax.Array]
WarpFn = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class SpeculativeState:
  """Loop carry of `decide_set`.

  Attributes:
    tokens_BxL: current state; set positions of rank < `start_B` are decided.
    draft_features_BxLxF: the raw logits that the next drafts are drawn from, or
      the features (hidden states) that the round's `project` maps to them.
    start_B: number of decided set positions of each row.
    round_B: rounds run for each row within this set (keys are folded with it).
    stats: running per-row statistics.
    bad_logits_B: whether any denoiser output for the row had NaN or +inf.
    draft_tokens_BxL: optional: the denoiser input whose output is
      `draft_features_BxLxF` (the accepted-prefix copy), tracked when given (the
      exact cache recomputes the drafts of a new block from it).
    context: optional: what a `CopyEvaluator` evaluates the copies against
      (a cache), carried across rounds.
  """
  tokens_BxL: jax.Array
  draft_features_BxLxF: jax.Array
  start_B: jax.Array
  round_B: jax.Array
  stats: SampleStats
  bad_logits_B: jax.Array
  draft_tokens_BxL: Optional[jax.Array] = None
  context: Any = None


@dataclasses.dataclass(frozen=True)
class CopyEvaluator:
  """How a verification round evaluates its `W` copies in one call.

  Attributes:
    evaluate: (copies int32[B, W, L], the round's drafts int32[B, L] (the state
      with every verified target's draft written, what the copy after the last
      reveals), the targets' positions int32[B, W], the carried `context`) ->
      (logits float[B, W, S, V] of the span of positions `offset_b .. offset_b + S - 1`
      of every copy, or, for a round given a `project`, the features it maps to
      them, offset int32[B], the context for the next rounds: the
      carried one, or one the call updated, e.g. a cache it extended; it is
      kept for every row, those without targets included, so an update must
      leave what a later round of such a row reads as it was). The span
      must hold every target of the round (every undecided set position). Its
      positions after the set are read only after a round that decides the
      rest of its set, and then from the pivot copy (see `shared_tail`).
    units_per_copy: what one evaluated copy adds to `stats.sequences` (1 when
      that counts whole sequences).
    units_per_round: what a round adds besides its copies (positions the copies
      share, evaluated once).
    prepare: optional `(state, active_B) -> state`, run at the start of every
      round before the drafts are drawn: may refresh `state.context` and the
      draft features (and must count what it calls in `state.stats`).
    shared_tail: whether `evaluate` may give every copy the last copy's logits
      at the span's positions after the set (evaluating them once). The round
      then makes the copies past the last target repeat it, so that the last
      copy is the pivot of every round that decides the set. Otherwise those
      copies reveal every target, and a round that accepts every draft of a
      set smaller than `W` takes the next drafts from the first of them,
      conditioned on the whole set (better drafts for the next set).
    verifiable: optional `positions int32[B, W] -> bool[B, W]`, true on a prefix
      of the targets that includes the first: the targets one call can verify
      exactly; the round verifies only those (a choice made from the positions,
      not the drafts' values, so the draw stays exact). Default: all.
  """
  evaluate: Callable[[jax.Array, jax.Array, jax.Array, Any],
                     tuple[jax.Array, jax.Array, Any]]
  units_per_copy: int = 1
  units_per_round: int = 0
  prepare: Optional[Callable[["SpeculativeState", jax.Array], "SpeculativeState"]] = None
  shared_tail: bool = False
  verifiable: Optional[Callable[[jax.Array], jax.Array]] = None


@dataclasses.dataclass(frozen=True)
class HeadEvaluator:
  """How a verification round gets its targets from one pass of a causal head.

  The head (`fef_jax.models.spec_head`) reads the step's backbone pass (closed
  over by `evaluate`) and runs causally over the set's positions in rank order,
  item `r` fed the values of ranks `< r`; so one pass gives the targets of all
  `W` drafts of a round, and the set is drawn from the head's joint.

  Attributes:
    evaluate: (positions int32[B, K] of ranks 0..K-1, values int32[B, K] at them,
      valid bool[B, K] (rank < set size), queries int32[B, W] item indices) ->
      logits float[B, W, V] of the queried items.
    num_items: static `K`, at least every set's size.
    units_per_pass: what one pass adds to `stats.sequences`.
  """
  evaluate: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
  num_items: int
  units_per_pass: int


def output_projection(logits_fn: Any) -> Optional[Callable[[jax.Array], jax.Array]]:
  """The denoiser's output projection, where it offers to run without it; else None.

  A denoiser that offers `project_hidden` (hidden states [..., F] -> its logits
  [..., V], row by row, as `fef_jax.models.Denoiser` does) must also offer
  `features` (int32[N, L] -> hidden states [N, L, F]: `__call__` without the
  projection) and, where it is block-local, `project=False` on `encode`,
  `block_logits`, `extend` and `extend_shared`. Samplers then carry hidden
  states (`F` numbers per position, not `V`) and project the rows they read
  only: a FeF round its `W` targets, a first-hitting step its one position.
  """
  return getattr(logits_fn, "project_hidden", None)


def to_logits(project: Optional[Callable[[jax.Array], jax.Array]]
              ) -> Callable[[jax.Array], jax.Array]:
  """rows [..., F] -> float32 logits [..., V]: `project` applied (None: the rows are
  logits already)."""
  if project is None:
    return lambda rows: rows.astype(jnp.float32)
  return lambda rows: project(rows).astype(jnp.float32)


def bad_features(features_NxLxF: jax.Array, tokens_NxL: jax.Array, mask_id: int,
                 projected: bool) -> jax.Array:
  """bool[N, L]: masked positions whose logits have a NaN or +inf (`bad_masked`), or,
  for hidden states that are `projected` later, any NaN or infinity (which the
  projection would turn into infinite or NaN logits)."""
  if not projected:
    return bad_masked(features_NxLxF, tokens_NxL, mask_id)
  return jnp.any(~jnp.isfinite(features_NxLxF), axis=-1) & (tokens_NxL == mask_id)


def call_features(logits_fn: LogitsFn, tokens_NxL: jax.Array, mask_id: int,
                  project: Optional[Callable[[jax.Array], jax.Array]]
                  ) -> tuple[jax.Array, jax.Array]:
  """Runs the denoiser, without its output projection where `project` (its
  `output_projection`) is given, for a caller that reads the logits of a few
  positions.

  Returns:
    (features [N, L, F]: float32 logits, or the hidden states; bool[N] flags of
    rows with NaN or +inf logits, or non-finite hidden states, at a masked
    position).
  """
  projected = project is not None
  return _checked((logits_fn.features if projected else logits_fn)(tokens_NxL), tokens_NxL,
                  mask_id, projected)


def whole_sequences(logits_fn: LogitsFn, features: bool = False) -> CopyEvaluator:
  """The default evaluator: the denoiser on the `B * W` whole copies (`S = L`, offset 0);
  with `features`, its `features` (hidden states, for a round given the denoiser's
  `output_projection`)."""
  def evaluate(copies_BxWxL: jax.Array, drafts_BxL: jax.Array, positions_BxW: jax.Array,
               context: Any) -> tuple[jax.Array, jax.Array, Any]:
    del drafts_BxL, positions_BxW  # every copy is evaluated whole
    # The whole copies need no context; it is carried unchanged.
    return (posterior.evaluate_copies(logits_fn.features if features else logits_fn,
                                      copies_BxWxL),
            jnp.zeros(copies_BxWxL.shape[:1], jnp.int32), context)
  return CopyEvaluator(evaluate)


def nan_or_plus_inf(logits_xV: jax.Array) -> jax.Array:
  """bool[...]: whether each row of logits `[..., V]` has a NaN or a +inf (-inf is a
  token of probability 0)."""
  return jnp.any(jnp.isnan(logits_xV) | (logits_xV == jnp.inf), axis=-1)


def bad_masked(logits_NxLxV: jax.Array, tokens_NxL: jax.Array, mask_id: int) -> jax.Array:
  """bool[N, L]: masked positions whose logits have a NaN or +inf."""
  return nan_or_plus_inf(logits_NxLxV) & (tokens_NxL == mask_id)


def _checked(out_NxLxF: jax.Array, tokens_NxL: jax.Array, mask_id: int,
             projected: bool) -> tuple[jax.Array, jax.Array]:
  """(a denoiser's output, cast to float32 unless it is hidden states `projected` later;
  bool[N] flags of rows with a bad output at a masked position, `bad_features`)."""
  if not projected:
    out_NxLxF = out_NxLxF.astype(jnp.float32)
  return out_NxLxF, jnp.any(bad_features(out_NxLxF, tokens_NxL, mask_id, projected), axis=-1)


def call_denoiser(logits_fn: LogitsFn, tokens_NxL: jax.Array,
                  mask_id: int) -> tuple[jax.Array, jax.Array]:
  """Runs the denoiser; also flags rows whose masked positions got NaN or +inf logits.

  Returns:
    (float32[N, L, V] logits, bool[N] bad-row flags).
  """
  return _checked(logits_fn(tokens_NxL), tokens_NxL, mask_id, False)


def call_with_extras(fn: Callable[[jax.Array], tuple[jax.Array, Any]], tokens_NxL: jax.Array,
                     mask_id: int, features: bool = False) -> tuple[jax.Array, Any, jax.Array]:
  """`call_denoiser` for a denoiser method that returns (logits, extras), e.g. a cache
  or hidden states: (float32[N, L, V] logits, extras, bool[N] bad-row flags). With
  `features`, `fn` returns hidden states instead, which keep their dtype and are
  flagged where not finite (`bad_features`)."""
  out_NxLxF, extras = fn(tokens_NxL)
  out_NxLxF, bad_N = _checked(out_NxLxF, tokens_NxL, mask_id, features)
  return out_NxLxF, extras, bad_N


def _residual_weights(logp_BxV: jax.Array, logq_BxV: jax.Array) -> jax.Array:
  """max(p - q, 0), unnormalized (`noise.weighted_draw` needs no normalization); p
  where the residual has no mass.

  The fallback is only reachable through float round-off: a rejection implies
  p(d) < q(d), hence p != q and a residual of positive mass.
  """
  p_BxV = jnp.exp(logp_BxV)
  residual_BxV = jnp.maximum(p_BxV - jnp.exp(logq_BxV), 0.0)
  usable_Bx1 = jnp.sum(residual_BxV, axis=-1, keepdims=True) > 1e-6
  return jnp.where(usable_Bx1, residual_BxV, p_BxV)


def _copy_targets(evaluator: CopyEvaluator, state: SpeculativeState, drafts_BxL: jax.Array,
                  rank_BxL: jax.Array, positions_BxW: jax.Array,
                  last_copy_B: Optional[jax.Array], window: int, mask_id: int,
                  project: Optional[Callable[[jax.Array], jax.Array]]):
  """Targets from `W` prefix-revealed copies evaluated in one call (the copies after
  `last_copy_B`, where given, repeat it); with `project`, the evaluator gives
  features, and only the `W` targets are projected.

  Returns:
    (target logits float32[B, W, V], bool[B] NaN/+inf-in-a-span flags,
    `next_drafts(pivot_B, active_B) -> (draft features, draft tokens)`: the span of
    the pivot copy, whose revealed prefix was accepted, written into the drafts;
    the evaluator's context after the call).
  """
  copies_BxWxL = posterior.prefix_revealed_copies(
      state.tokens_BxL, drafts_BxL, rank_BxL, state.start_B, window, last_copy_B)
  span_BxWxSxF, offset_B, context = evaluator.evaluate(copies_BxWxL, drafts_BxL,
                                                       positions_BxW, state.context)
  span_BxWxSxF = span_BxWxSxF.astype(state.draft_features_BxLxF.dtype)
  span = span_BxWxSxF.shape[2]
  bad_BxWxS = bad_features(span_BxWxSxF, posterior.span_of(copies_BxWxL, offset_B, span),
                           mask_id, project is not None)
  # Targets lie in the span; invalid targets (past the set) may not, and are clipped.
  span_positions_BxW = jnp.clip(positions_BxW - offset_B[:, None], 0, span - 1)
  target_logits_BxWxV = to_logits(project)(
      posterior.gather_targets(span_BxWxSxF, span_positions_BxW))

  def next_drafts(pivot_B, active_B):
    pivot_span_BxSxF = jnp.take_along_axis(span_BxWxSxF, pivot_B[:, None, None, None],
                                           axis=1)[:, 0]
    draft_features_BxLxF = jnp.where(
        active_B[:, None, None],
        posterior.write_span(state.draft_features_BxLxF, pivot_span_BxSxF, offset_B),
        state.draft_features_BxLxF)
    draft_tokens_BxL = state.draft_tokens_BxL
    if draft_tokens_BxL is not None:
      pivot_copy_BxL = jnp.take_along_axis(copies_BxWxL, pivot_B[:, None, None], axis=1)[:, 0]
      draft_tokens_BxL = jnp.where(active_B[:, None], pivot_copy_BxL, draft_tokens_BxL)
    return draft_features_BxLxF, draft_tokens_BxL

  return target_logits_BxWxV, jnp.any(bad_BxWxS, axis=(1, 2)), next_drafts, context


def _set_in_rank_order(rank_BxL: jax.Array, count_B: jax.Array, num_items: int
                       ) -> tuple[jax.Array, jax.Array]:
  """A head pass's items: the set's positions in rank order, and which items are in it.

  Returns:
    (int32[B, K] the positions of ranks `0 .. K-1`, `K = num_items`, followed past
    the set's end by positions outside it; bool[B, K] true for the first `count_B`
    items).
  """
  positions_BxK = posterior.positions_by_rank(rank_BxL)[:, :num_items]
  return positions_BxK, jnp.arange(num_items)[None, :] < count_B[:, None]


def _head_targets(evaluator: HeadEvaluator, state: SpeculativeState, drafts_BxL: jax.Array,
                  rank_BxL: jax.Array, count_B: jax.Array, window: int):
  """Targets from one head pass over the set in rank order: committed values, then drafts.

  Item `r` of the pass reads the values of ranks `< r`: the committed tokens
  (ranks `< start`) and this round's drafts, exactly what copy `r - start` of the
  copies path reveals. The drafts stay the step's (`next_drafts` keeps them).
  """
  num_items = evaluator.num_items
  positions_BxK, valid_BxK = _set_in_rank_order(rank_BxL, count_B, num_items)
  committed_BxL = rank_BxL < state.start_B[:, None]
  values_BxK = jnp.take_along_axis(jnp.where(committed_BxL, state.tokens_BxL, drafts_BxL),
                                   positions_BxK, axis=1)
  queries_BxW = jnp.minimum(state.start_B[:, None] + jnp.arange(window)[None, :],
                            num_items - 1)
  target_logits_BxWxV = evaluator.evaluate(positions_BxK, values_BxK, valid_BxK,
                                           queries_BxW).astype(jnp.float32)
  return (target_logits_BxWxV,
          lambda pivot_B, active_B: (state.draft_features_BxLxF, state.draft_tokens_BxL))


def _head_drafts(drafter: HeadEvaluator, warp_fn: WarpFn, state: SpeculativeState,
                 rank_BxL: jax.Array, count_B: jax.Array, uniform_BxWxU: jax.Array,
                 window: int) -> tuple[jax.Array, jax.Array]:
  """The round's `W` drafts, each from the head given the committed values and the
  drafts before it (`W` head passes; draft `c` reads the uniforms `uniform_BxWxU[:, c]`).

  Returns:
    (int32[B, L] drafts, at the set positions of ranks `start .. start + W - 1`;
    float32[B, W, V] warped log-probabilities `q_c` that draft `c` was drawn from).
  """
  num_items = drafter.num_items
  batch = rank_BxL.shape[0]
  positions_BxK, valid_BxK = _set_in_rank_order(rank_BxL, count_B, num_items)
  # Committed values at ranks < start; masks (never read: the head is causal) after.
  values_BxK = jnp.take_along_axis(state.tokens_BxL, positions_BxK, axis=1)

  def draft_one(values_BxK, c_and_uniform_BxU):
    c, uniform_BxU = c_and_uniform_BxU
    item_B = jnp.minimum(state.start_B + c, num_items - 1)
    logits_BxV = drafter.evaluate(positions_BxK, values_BxK, valid_BxK, item_B[:, None])[:, 0]
    logq_BxV = warp_fn(logits_BxV.astype(jnp.float32))
    draft_B = noise.categorical(logq_BxV, uniform_BxU)
    # Past the set's end the clipped item may be the set's last one: keep its draft.
    write_BxK = ((jnp.arange(num_items)[None, :] == item_B[:, None])
                 & (state.start_B + c < count_B)[:, None])
    return jnp.where(write_BxK, draft_B[:, None], values_BxK), logq_BxV

  values_BxK, logq_WxBxV = jax.lax.scan(
      draft_one, values_BxK, (jnp.arange(window), jnp.moveaxis(uniform_BxWxU, 1, 0)))
  logq_BxWxV = jnp.moveaxis(logq_WxBxV, 0, 1)
  rows_Bx1 = jnp.arange(batch)[:, None]
  drafts_BxL = state.tokens_BxL.at[rows_Bx1, positions_BxK].set(values_BxK)
  return drafts_BxL, logq_BxWxV


def verification_round(denoiser: Union[LogitsFn, CopyEvaluator, HeadEvaluator],
                       warp_fn: WarpFn, state: SpeculativeState, rank_BxL: jax.Array,
                       count_B: jax.Array, step_keys_B: jax.Array, *, window: int,
                       mask_id: int,
                       drafter: Optional[HeadEvaluator] = None,
                       project: Optional[Callable[[jax.Array], jax.Array]] = None
                       ) -> SpeculativeState:
  """One draft / verify / accept round for every row (a no-op for decided rows).

  Args:
    denoiser: int32[N, L] -> float[N, L, V], called once on `B * window` rows
      (its `features` with `project`); or a `CopyEvaluator`, called once on the
      `[B, window, L]` copies; or a `HeadEvaluator`, called once on the set in
      rank order (its drafts are not updated by the round).
    warp_fn: raw logits -> normalized sampling log-probs (same for draft and target).
    state: the loop carry.
    rank_BxL: the ordered set (see `fef_jax.posterior`).
    count_B: set size of each row.
    step_keys_B: one PRNG key per row; the round counter is folded in.
    window: static number of drafts verified per round (`W >= 1`).
    mask_id: the mask token.
    drafter: optional head that drafts the `W` targets sequentially (with copy
      verification; its passes count in `nfe` and `sequences`); default: each of
      the `W` targets drafted independently from its marginal in
      `state.draft_features_BxLxF` (only the targets are projected, warped and
      drawn).
    project: the denoiser's `output_projection` where the carry's draft
      features and the copies' evaluations are hidden states; None: logits.

  Returns:
    The updated carry: at least one more set position decided in every row
    that had undecided ones.
  """
  active_B = state.start_B < count_B
  if not isinstance(denoiser, (CopyEvaluator, HeadEvaluator)):
    denoiser = whole_sequences(denoiser, features=project is not None)
  if isinstance(denoiser, CopyEvaluator) and denoiser.prepare is not None:
    state = denoiser.prepare(state, active_B)
  batch, length = state.tokens_BxL.shape
  # One draw per round for the drafts, the acceptance tests and the residual.
  draws = noise.UNIFORMS_PER_DRAW
  draft_uniform_BxN, accept_uniform_BxW, residual_uniform_BxU = noise.uniforms(
      jax.vmap(jax.random.fold_in)(step_keys_B, state.round_B), (window * draws, window, draws))

  target_rank_BxW = state.start_B[:, None] + jnp.arange(window)[None, :]
  # Invalid targets (past the set) get some position; every use of theirs is masked.
  positions_BxW = posterior.positions_of_ranks(rank_BxL, target_rank_BxW)
  valid_BxW = target_rank_BxW < count_B[:, None]
  if isinstance(denoiser, CopyEvaluator) and denoiser.verifiable is not None:
    valid_BxW = valid_BxW & denoiser.verifiable(positions_BxW)
  num_valid_B = jnp.sum(valid_BxW, axis=1).astype(jnp.int32)
  if isinstance(denoiser, CopyEvaluator) and denoiser.shared_tail:
    # The copy that reveals every target but the last; the copies after it repeat it.
    last_copy_B = jnp.maximum(num_valid_B - 1, 0)
  else:
    last_copy_B = None
  uniform_BxWxU = draft_uniform_BxN.reshape(batch, window, draws)
  if drafter is None:
    # Only the targets' drafts are read (by the copies and the acceptance test), so
    # only the `W` targets are projected, warped and drawn, not all `L` positions.
    logq_BxWxV = warp_fn(to_logits(project)(jnp.take_along_axis(
        state.draft_features_BxLxF, positions_BxW[..., None], axis=1)))
    # Invalid targets (past the set) are dropped from the scatter: their positions
    # may be set positions, whose drafts must stay.
    drafts_BxL = state.tokens_BxL.at[
        jnp.arange(batch)[:, None], jnp.where(valid_BxW, positions_BxW, length)].set(
            noise.categorical(logq_BxWxV, uniform_BxWxU), mode="drop")
    draft_units = 0
  else:
    drafts_BxL, logq_BxWxV = _head_drafts(drafter, warp_fn, state, rank_BxL, count_B,
                                          uniform_BxWxU, window)
    draft_units = window * drafter.units_per_pass
  draft_bad_B = jnp.any(jnp.isnan(logq_BxWxV).any(axis=-1) & valid_BxW, axis=1)
  if isinstance(denoiser, HeadEvaluator):
    target_logits_BxWxV, next_drafts = _head_targets(denoiser, state, drafts_BxL, rank_BxL,
                                                     count_B, window)
    span_bad_B = jnp.zeros_like(active_B)
    units, context = denoiser.units_per_pass, state.context
  else:
    target_logits_BxWxV, span_bad_B, next_drafts, context = _copy_targets(
        denoiser, state, drafts_BxL, rank_BxL, positions_BxW, last_copy_B, window, mask_id,
        project)
    units = window * denoiser.units_per_copy + denoiser.units_per_round

  # NaN or +inf in a target's logits (a projected row, or a head's output).
  target_bad_B = jnp.any(nan_or_plus_inf(target_logits_BxWxV) & valid_BxW, axis=1)
  logp_BxWxV = warp_fn(target_logits_BxWxV)
  draft_BxW = jnp.take_along_axis(drafts_BxL, positions_BxW, axis=1)
  log_ratio_BxW = (jnp.take_along_axis(logp_BxWxV, draft_BxW[..., None], axis=-1)
                   - jnp.take_along_axis(logq_BxWxV, draft_BxW[..., None], axis=-1))[..., 0]
  accept_BxW = valid_BxW & (jnp.log(accept_uniform_BxW) < log_ratio_BxW)
  num_accepted_B = jnp.sum(jnp.cumprod(accept_BxW, axis=1), axis=1).astype(jnp.int32)
  rejected_B = num_accepted_B < num_valid_B

  # The first rejected copy, or when all are accepted the last copy (with fewer targets
  # than copies, which then reveals the whole set, unless the tail is shared and the
  # last copy repeats the last target's). Its logits serve as the next drafts.
  pivot_B = jnp.minimum(num_accepted_B, window - 1 if last_copy_B is None else last_copy_B)
  pivot_logp_BxV = jnp.take_along_axis(logp_BxWxV, pivot_B[:, None, None], axis=1)[:, 0]
  pivot_logq_BxV = jnp.take_along_axis(logq_BxWxV, pivot_B[:, None, None], axis=1)[:, 0]
  residual_B = noise.weighted_draw(_residual_weights(pivot_logp_BxV, pivot_logq_BxV),
                                   residual_uniform_BxU)

  offset_BxL = rank_BxL - state.start_B[:, None]
  take_draft_BxL = (offset_BxL >= 0) & (offset_BxL < num_accepted_B[:, None])
  take_residual_BxL = rejected_B[:, None] & (offset_BxL == num_accepted_B[:, None])
  tokens_BxL = jnp.where(take_draft_BxL, drafts_BxL,
                         jnp.where(take_residual_BxL, residual_B[:, None], state.tokens_BxL))
  num_committed_B = num_accepted_B + rejected_B.astype(jnp.int32)

  draft_features_BxLxF, draft_tokens_BxL = next_drafts(pivot_B, active_B)
  active = active_B.astype(jnp.int32)
  draft_calls = 0 if drafter is None else window
  stats = state.stats.add_calls(active_B, calls=1 + draft_calls, units=units + draft_units)
  stats = stats.replace(
      rounds=stats.rounds + active,
      drafts_examined=stats.drafts_examined + num_committed_B,
      drafts_accepted=stats.drafts_accepted + num_accepted_B)
  return SpeculativeState(
      tokens_BxL=tokens_BxL, draft_features_BxLxF=draft_features_BxLxF,
      start_B=state.start_B + num_committed_B, round_B=state.round_B + active,
      stats=stats,
      bad_logits_B=state.bad_logits_B | ((span_bad_B | target_bad_B | draft_bad_B) & active_B),
      draft_tokens_BxL=draft_tokens_BxL, context=context)


def decide_set(denoiser: Union[LogitsFn, CopyEvaluator, HeadEvaluator], warp_fn: WarpFn,
               tokens_BxL: jax.Array, draft_features_BxLxF: jax.Array, rank_BxL: jax.Array,
               count_B: jax.Array, step_keys_B: jax.Array, stats: SampleStats,
               *, window: int, mask_id: int,
               draft_tokens_BxL: Optional[jax.Array] = None,
               context: Any = None,
               drafter: Optional[HeadEvaluator] = None,
               project: Optional[Callable[[jax.Array], jax.Array]] = None
               ) -> SpeculativeState:
  """Decides every row's ordered set exactly, by speculative rounds in a `lax.while_loop`.

  Args:
    denoiser: int32[N, L] -> float[N, L, V] (batch-polymorphic), a
      `CopyEvaluator` whose span holds every position of the set, or a
      `HeadEvaluator` with `num_items` at least every set's size.
    warp_fn: raw logits -> normalized sampling log-probs.
    tokens_BxL: the state; set positions must be masked.
    draft_features_BxLxF: raw logits to draft the first round from (or, with
      `project`, the hidden states it maps to them); any function of already
      revealed tokens keeps the result exact (only speed changes).
    rank_BxL: the ordered set of each row (see `fef_jax.posterior`).
    count_B: set size of each row (0 allowed).
    step_keys_B: one PRNG key per row.
    stats: statistics to add this set's rounds to.
    window: static verification window `W >= 1`.
    mask_id: the mask token.
    draft_tokens_BxL: optional: the input that `draft_features_BxLxF` came from;
      given, the carry tracks it (see `SpeculativeState`).
    context: optional: the initial context of a `CopyEvaluator` (a cache).
    drafter: optional head that drafts each round's targets sequentially (see
      `verification_round`); its `num_items` must cover every set.
    project: the denoiser's `output_projection`, where the draft features and
      the copies' evaluations are its hidden states (see `verification_round`).

  Returns:
    The final carry: `tokens_BxL` with every set position decided, the draft
    features for the next set (and their input, if tracked), the context, and
    updated statistics. Rounds per row are at most
    the set size, since each round decides at least one position.
  """
  batch = tokens_BxL.shape[0]
  init = SpeculativeState(
      tokens_BxL=tokens_BxL, draft_features_BxLxF=draft_features_BxLxF,
      start_B=jnp.zeros((batch,), jnp.int32), round_B=jnp.zeros((batch,), jnp.int32),
      stats=stats, bad_logits_B=jnp.zeros((batch,), bool),
      draft_tokens_BxL=draft_tokens_BxL, context=context)

  def body(state):
    return verification_round(denoiser, warp_fn, state, rank_BxL, count_B,
                              step_keys_B, window=window, mask_id=mask_id, drafter=drafter,
                              project=project)

  return jax.lax.while_loop(lambda s: jnp.any(s.start_B < count_B), body, init)
