"""The denoising loop shared by every sampler.

One `lax.while_loop` over steps runs until no row has masks. Each step looks at
the lowest unfinished block of every row and hands a `StepContext` to the
method's *plan* (which positions to commit). Two *deciders* fill them in:
`independent` (each position from its own marginal at the current state: one
call per step, the usual parallel decoding; `one_token_step` is its lean form for
first-hitting with a value-free choice) and the FeF deciders, which draw the
set from the prefix-conditioned factorization by speculative verification
(optionally over one window of copies against a cached context:
`fef_jax.samplers.cache`, or with a causal head: `fef_jax.samplers.head`). All
randomness is derived per row from `fold_in(row_key, row_step)`, so a row's
result does not depend on the other rows of the batch.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from fef_jax import noise
from fef_jax import posterior
from fef_jax import speculative
from fef_jax import unrolled_threefry
from fef_jax import warp
from fef_jax.samplers import cache
from fef_jax.samplers import head
from fef_jax.samplers import selection
from fef_jax.samplers import shared_prefix
from fef_jax.samplers.config import SamplerConfig
from fef_jax.types import SampleResult, SampleStats

LogitsFn = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class StepContext:
  """What a plan sees at one step (all per row).

  Attributes:
    eligible_BxL: masked positions of the current block.
    remaining_B: number of eligible positions.
    steps_left_B: steps left for the current block, >= 1 (the last step must
      commit every remaining position).
    steps_per_block_B: the block's step budget.
    log_probs_BxLxV: warped predictive log-probabilities at this step.
    x0_BxL: one proposal per position drawn from `log_probs` (the values that
      the independent decider commits; a scoring aid for FeF).
    uniform_BxN: per-row uniforms in `(0, 1)` reserved for the plan, `N = L + 1`
      (e.g. random scores, then a random size).
  """
  eligible_BxL: jax.Array
  remaining_B: jax.Array
  steps_left_B: jax.Array
  steps_per_block_B: jax.Array
  log_probs_BxLxV: jax.Array
  x0_BxL: jax.Array
  uniform_BxN: jax.Array


Plan = Callable[[SamplerConfig, StepContext], jax.Array]


@flax.struct.dataclass
class LoopState:
  """The carry of a sampler's step loop: the sequence, where each row is in its blocks
  and steps, the statistics so far and whether any logits were NaN or +inf."""
  tokens_BxL: jax.Array
  # FeF only: the drafts' logits, or hidden states (`draft_projection`), across steps.
  draft_features_BxLxF: Optional[jax.Array]
  cur_block_B: jax.Array
  block_step_B: jax.Array
  step_B: jax.Array
  stats: SampleStats
  bad_logits_B: jax.Array
  # FeF with a cache only: the cache (`cache.Context`), and in exact mode the
  # input of the draft logits.
  draft_tokens_BxL: Optional[jax.Array] = None
  context: Optional[cache.Context] = None


def _split_rows(keys_B: jax.Array, num: int) -> list[jax.Array]:
  keys_BxN = jax.vmap(lambda k: jax.random.split(k, num))(keys_B)
  return [keys_BxN[:, i] for i in range(num)]


def _eligible(config: SamplerConfig, state: LoopState, block_BxL) -> jax.Array:
  """bool[B, L]: the masked positions of each row's current block."""
  return (state.tokens_BxL == config.mask_id) & (block_BxL == state.cur_block_B[:, None])


def _context(state: LoopState, eligible_BxL, steps_per_block_B, log_probs_BxLxV,
             keys_B) -> StepContext:
  """The plan's view of the step; its randomness (the proposals `x0` and the plan's
  uniforms) is one draw from `keys_B` (`fef_jax.noise`)."""
  batch, length, _ = log_probs_BxLxV.shape
  draws = noise.UNIFORMS_PER_DRAW
  x0_uniform_BxN, plan_uniform_BxN = noise.uniforms(keys_B, (length * draws, length + 1))
  return StepContext(
      eligible_BxL=eligible_BxL,
      remaining_B=jnp.sum(eligible_BxL, axis=1).astype(jnp.int32),
      steps_left_B=jnp.maximum(steps_per_block_B - state.block_step_B, 1),
      steps_per_block_B=steps_per_block_B,
      log_probs_BxLxV=log_probs_BxLxV,
      x0_BxL=noise.categorical(log_probs_BxLxV,
                               x0_uniform_BxN.reshape(batch, length, draws)),
      uniform_BxN=plan_uniform_BxN)


def _commit(state: LoopState, commit_BxL, values_BxL, bad_B, active_B) -> LoopState:
  """A one-call step's result: `values` at the committed positions, one call and one
  round per active row, and the rows whose logits were bad."""
  stats = state.stats.add_calls(active_B)
  stats = stats.replace(rounds=stats.rounds + active_B.astype(jnp.int32))
  return state.replace(tokens_BxL=jnp.where(commit_BxL, values_BxL, state.tokens_BxL),
                       stats=stats, bad_logits_B=state.bad_logits_B | (bad_B & active_B))


def independent_step(plan: Plan, logits_fn: LogitsFn, warp_fn, config: SamplerConfig,
                     state: LoopState, block_BxL, steps_per_block_B, step_keys_B,
                     active_B) -> LoopState:
  """Commits the plan's positions, each drawn from its marginal at the current state."""
  logits_BxLxV, bad_B = speculative.call_denoiser(logits_fn, state.tokens_BxL, config.mask_id)
  ctx = _context(state, _eligible(config, state, block_BxL), steps_per_block_B,
                 warp_fn(logits_BxLxV), step_keys_B)
  commit_BxL = plan(config, ctx) & ctx.eligible_BxL
  return _commit(state, commit_BxL, ctx.x0_BxL, bad_B, active_B)


# Selection rules that read neither the proposals nor the predictive distribution.
VALUE_FREE_RULES = ("position", "random", *selection.FIXED_ORDERS)


def one_token_step(plan: Plan, logits_fn: LogitsFn, warp_fn, config: SamplerConfig,
                   state: LoopState, block_BxL, steps_per_block_B, step_keys_B,
                   active_B) -> LoopState:
  """First-hitting with a choice that reads no values (`select` in `VALUE_FREE_RULES`).

  The same law as `independent_step` with the first-hitting plan (one eligible
  position by the rule's score, drawn from its marginal), but the position is
  chosen first, so only its logits are warped and only its token is drawn:
  `[B, V]` work instead of the `[B, L, V]` warp and draw of every position, and
  an argmax instead of the plan's sort; a denoiser that offers its output
  projection (`speculative.output_projection`) projects that position only.
  `plan` and `steps_per_block_B` are unused.
  """
  del plan, steps_per_block_B
  project = speculative.output_projection(logits_fn)
  features_BxLxF, bad_B = speculative.call_features(logits_fn, state.tokens_BxL,
                                                    config.mask_id, project)
  length = features_BxLxF.shape[1]
  eligible_BxL = _eligible(config, state, block_BxL)
  score_uniform_BxL, token_uniform_BxU = noise.uniforms(step_keys_B,
                                                        (length, noise.UNIFORMS_PER_DRAW))
  position_B = selection.best(
      selection.scores(config.select, None, state.tokens_BxL, score_uniform_BxL),
      eligible_BxL)
  logits_BxV = speculative.to_logits(project)(
      jnp.take_along_axis(features_BxLxF, position_B[:, None, None], axis=1)[:, 0])
  # The projected row too: NaN in the projection alone leaves the hidden states finite.
  bad_B = bad_B | speculative.nan_or_plus_inf(logits_BxV)
  log_probs_BxV = warp_fn(logits_BxV)
  token_B = noise.categorical(log_probs_BxV, token_uniform_BxU)
  commit_BxL = eligible_BxL & (jnp.arange(length)[None, :] == position_B[:, None])
  return _commit(state, commit_BxL, token_B[:, None], bad_B, active_B)


def _enter_window(denoiser: cache.BlockLocalDenoiser, config: SamplerConfig,
                  state: LoopState, in_block_BxL, active_B,
                  units_per_position: int, features: bool) -> LoopState:
  """Cached FeF: refreshes the rows whose window moved (`cache.refresh`, which
  counts the call; `stats.sequences` is in token positions here, or in
  layer-positions with a head, see `run`).

  The window holds the current generation block (`in_block_BxL`: its
  positions, decided or not), so it moves only when a row enters a new block.
  With `features` the drafts are hidden states (`draft_projection`).
  """
  start_B = cache.window_start(config.cache, in_block_BxL,
                               cache.window_length(config, denoiser))
  draft_features_BxLxF, context, stats, bad_B = cache.refresh(
      denoiser, config, active_B & (start_B != state.context.start_B), start_B,
      state.tokens_BxL, state.draft_tokens_BxL, state.draft_features_BxLxF, state.context,
      state.stats, state.bad_logits_B, units_per_position, features)
  return state.replace(draft_features_BxLxF=draft_features_BxLxF, context=context,
                       stats=stats, bad_logits_B=bad_B)


def _head_backbone(denoiser: head.HeadDenoiser, config: SamplerConfig, state: LoopState,
                   active_B, num_items: int
                   ) -> tuple[LoopState, speculative.HeadEvaluator]:
  """FeF with a head: the step's backbone pass (its logits become the drafts);
  returns the rounds' head evaluator. Counts one call and `L * num_layers` units
  (one whole sequence, `stats.sequences` being in layer-positions, see `run`)."""
  logits_BxLxV, hidden, bad_B = head.backbone(denoiser, state.tokens_BxL, config.mask_id)
  stats = state.stats.add_calls(active_B,
                                units=state.tokens_BxL.shape[1] * denoiser.num_layers)
  state = state.replace(draft_features_BxLxF=logits_BxLxV, stats=stats,
                        bad_logits_B=state.bad_logits_B | (bad_B & active_B))
  return state, head.evaluator(denoiser, hidden, num_items)


def _head_window_backbone(denoiser: head.HeadDenoiser, config: SamplerConfig,
                          state: LoopState, active_B, num_items: int
                          ) -> tuple[LoopState, speculative.HeadEvaluator]:
  """Head drafts over the exact cache: the step's backbone pass over the state's
  window only (`head.window_backbone`; one call, `S * num_layers` units). Its
  logits replace the drafts in the window and the state becomes the drafts'
  input, as the uncached head path's full pass does; returns the rounds' head
  evaluator over the window's hidden states."""
  span = cache.window_length(config, denoiser)
  logits_BxSxV, hidden_BxLxD, bad_B = head.window_backbone(
      denoiser, state.context.cache, state.context.start_B, state.tokens_BxL, span,
      config.mask_id)
  logits_BxLxV = jnp.where(
      active_B[:, None, None],
      posterior.write_span(state.draft_features_BxLxF, logits_BxSxV, state.context.start_B),
      state.draft_features_BxLxF)
  stats = state.stats.add_calls(active_B, units=span * denoiser.num_layers)
  state = state.replace(
      draft_features_BxLxF=logits_BxLxV, stats=stats,
      draft_tokens_BxL=jnp.where(active_B[:, None], state.tokens_BxL, state.draft_tokens_BxL),
      bad_logits_B=state.bad_logits_B | (bad_B & active_B))
  return state, head.evaluator(denoiser, hidden_BxLxD, num_items)


def _uses_head(config: SamplerConfig) -> bool:
  return config.method == "fef" and "head" in (config.verifier, config.drafter)


def draft_projection(config: SamplerConfig, logits_fn: LogitsFn):
  """FeF's carried drafts are hidden states, projected where read, when the denoiser
  offers its output projection (`speculative.output_projection`, returned; else
  None). The head paths carry logits: a head reads the backbone's hidden states
  beside them."""
  if config.method != "fef" or _uses_head(config):
    return None
  return speculative.output_projection(logits_fn)


def fef_step(plan: Plan, logits_fn: LogitsFn, warp_fn, config: SamplerConfig,
             state: LoopState, block_BxL, steps_per_block_B, step_keys_B,
             active_B) -> LoopState:
  """Decides the plan's set exactly (FeF), by speculative verification rounds.

  `commit_set`: the plan's set is drawn from its prefix-factorized joint.
  `joint_then_remask`: every eligible position is drawn jointly, then a
  uniformly random subset of the plan's size is kept and the rest re-masked
  (the reverse transition; a value-independent choice, so still exact).
  With a cache the rounds evaluate only the window's positions; with
  `verifier="head"` the backbone runs on the state first and the rounds run the
  head (the set is drawn from the head's joint); with `drafter="head"` the
  backbone runs on the state first (over the window, with the exact cache) and
  the head drafts each round's targets, which the copies verify (the set is
  drawn from the backbone's prefix factorization).
  """
  context_keys_B, order_keys_B, keep_keys_B, spec_keys_B = _split_rows(step_keys_B, 4)
  eligible_BxL = _eligible(config, state, block_BxL)
  denoiser, drafter = logits_fn, None
  project = draft_projection(config, logits_fn)
  # With a head, `stats.sequences` counts layer-positions (see `run`).
  units_per_position = logits_fn.num_layers if _uses_head(config) else 1
  if config.cache == "prefix":
    denoiser = shared_prefix.evaluator(logits_fn, state.tokens_BxL.shape[1],
                                       features=project is not None)
  elif config.cache != "none":
    # Before the drafts are read: a new window's drafts come from the refresh.
    state = _enter_window(logits_fn, config, state, block_BxL == state.cur_block_B[:, None],
                          active_B, units_per_position, project is not None)
    denoiser = cache.evaluator(logits_fn, config, state.tokens_BxL.shape[1], units_per_position,
                               project is not None)
  if _uses_head(config):
    # A set lies in one generation block, so block_length items hold any set.
    length = state.tokens_BxL.shape[1]
    num_items = min(config.block_length or length, length)
    backbone = _head_backbone if config.cache == "none" else _head_window_backbone
    state, head_evaluator = backbone(logits_fn, config, state, active_B, num_items)
    if config.verifier == "head":
      denoiser = head_evaluator
    else:
      if config.cache == "none":
        denoiser = dataclasses.replace(speculative.whole_sequences(logits_fn),
                                       units_per_copy=length * logits_fn.num_layers)
      drafter = head_evaluator
  # Every position's logits: projected here only where the plan or order reads them.
  ctx = _context(state, eligible_BxL, steps_per_block_B,
                 warp_fn(speculative.to_logits(project)(state.draft_features_BxLxF)),
                 context_keys_B)
  if config.steps is None:
    # One step per block: the plan would choose every eligible position, so its
    # scores (and the proposals `x0` they may read) need not be drawn; on CPU a
    # draw costs as much as a round's other small ops.
    chosen_BxL = ctx.eligible_BxL
  else:
    chosen_BxL = plan(config, ctx) & ctx.eligible_BxL
  decide_BxL = ctx.eligible_BxL if config.mode == "joint_then_remask" else chosen_BxL
  order_rule = "position" if config.order == "left_to_right" else config.order
  length = eligible_BxL.shape[1]
  if order_rule == "position":
    rank_BxL = selection.rank_left_to_right(decide_BxL)  # two sorts fewer per step
  else:
    rank_BxL = selection.rank_by_score(
        selection.scores(order_rule, ctx.log_probs_BxLxV, ctx.x0_BxL,
                         noise.uniforms(order_keys_B, (length,))[0]), decide_BxL)
  decided = speculative.decide_set(
      denoiser, warp_fn, state.tokens_BxL, state.draft_features_BxLxF, rank_BxL,
      jnp.sum(decide_BxL, axis=1).astype(jnp.int32), spec_keys_B, state.stats,
      window=config.window, mask_id=config.mask_id,
      draft_tokens_BxL=state.draft_tokens_BxL, context=state.context, drafter=drafter,
      project=project)
  tokens_BxL = decided.tokens_BxL
  if config.mode == "joint_then_remask":
    keep_BxL = selection.top_k(
        selection.scores("random", ctx.log_probs_BxLxV, ctx.x0_BxL,
                         noise.uniforms(keep_keys_B, (length,))[0]),
        decide_BxL, jnp.sum(chosen_BxL, axis=1))
    tokens_BxL = jnp.where(decide_BxL & ~keep_BxL, config.mask_id, tokens_BxL)
  return state.replace(tokens_BxL=tokens_BxL,
                       draft_features_BxLxF=decided.draft_features_BxLxF,
                       draft_tokens_BxL=decided.draft_tokens_BxL, context=decided.context,
                       stats=decided.stats,
                       bad_logits_B=state.bad_logits_B | decided.bad_logits_B)


def steps_per_block(config: SamplerConfig, masked_BxL: jax.Array,
                    block_length: int) -> jax.Array:
  """int32[B]: each block's step budget: `steps` split evenly over the row's blocks.

  With `steps=None` every step commits one token (FeF: the whole block at once).
  A budget below one step per block is raised to one.
  """
  num_masked_B = jnp.sum(masked_BxL, axis=1)
  num_blocks_B = (num_masked_B + block_length - 1) // block_length
  if config.steps is None:
    budget_B = jnp.ones_like(num_masked_B) if config.method == "fef" else num_masked_B
  else:
    budget_B = jnp.full_like(num_masked_B, config.steps)
  return jnp.maximum(budget_B // jnp.maximum(num_blocks_B, 1), 1).astype(jnp.int32)


def run(logits_fn: LogitsFn, tokens_BxL: jax.Array, key: jax.Array,
        config: SamplerConfig, plan: Plan) -> tuple[SampleResult, jax.Array]:
  """Runs the denoising loop until no masks remain.

  Args:
    logits_fn: denoiser, int32[N, L] -> float[N, L, V].
    tokens_BxL: int32 prompts; `config.mask_id` marks the positions to sample.
    key: PRNG key (split into one key per row; a threefry key draws through
      `fef_jax.unrolled_threefry`, the same values).
    config: resolved options (static).
    plan: the method's choice of positions to commit at each step.

  Returns:
    (SampleResult, bool[B] flags of rows whose logits had NaN or +inf).

  With a cache, `stats.sequences` is counted in token positions during
  the loop (`unit = L` per whole sequence, since a window copy is a fraction of
  one), with `verifier="head"` or `drafter="head"` in layer-positions
  (`unit = L * num_layers`, with or without the cache),
  and reported as whole-sequence equivalents, rounded up.
  """
  batch, length = tokens_BxL.shape
  warp_fn = functools.partial(warp.warp_log_probs, mask_id=config.mask_id,
                              temperature=config.temperature, top_k=config.top_k,
                              top_p=config.top_p)
  masked_BxL = tokens_BxL == config.mask_id
  block_length = config.block_length or length
  block_BxL = selection.generation_blocks(masked_BxL, block_length)
  budget_B = steps_per_block(config, masked_BxL, block_length)
  # The same draws; the hash unrolled keeps XLA:CPU from running each draw as a
  # nested loop (see fef_jax.unrolled_threefry).
  row_keys_B = jax.random.split(unrolled_threefry.as_unrolled(key), batch)
  stats = SampleStats.zeros(batch)
  project = draft_projection(config, logits_fn)
  draft_features_BxLxF, bad_B = None, jnp.zeros((batch,), bool)
  draft_tokens_BxL = context = None
  unit = length if config.cache != "none" else 1
  step = independent_step
  if config.method == "first_hitting" and config.select in VALUE_FREE_RULES:
    step = one_token_step
  if _uses_head(config):
    unit = length * logits_fn.num_layers
  if _uses_head(config) and config.cache == "none":
    step = fef_step
    # Every step runs the backbone first; the carry only needs the logits' shape.
    draft_features_BxLxF = jnp.zeros(jax.eval_shape(logits_fn, tokens_BxL).shape, jnp.float32)
  elif config.method == "fef":
    step = fef_step
    if config.cache in ("exact", "approximate"):
      # The first call also caches the states for the first window.
      draft_features_BxLxF, context, bad_B = cache.initial(logits_fn, config, tokens_BxL,
                                                           block_BxL == 0, project is not None)
      if config.cache == "exact":
        draft_tokens_BxL = tokens_BxL
    else:
      draft_features_BxLxF, bad_B = speculative.call_features(logits_fn, tokens_BxL,
                                                              config.mask_id, project)
    stats = stats.add_calls(jnp.ones((batch,), bool), units=unit)

  def body(state: LoopState) -> LoopState:
    masked_BxL = state.tokens_BxL == config.mask_id
    active_B = jnp.any(masked_BxL, axis=1)
    cur_block_B = selection.current_block(masked_BxL, block_BxL)
    block_step_B = jnp.where(cur_block_B == state.cur_block_B, state.block_step_B, 0)
    state = state.replace(cur_block_B=cur_block_B, block_step_B=block_step_B)
    step_keys_B = jax.vmap(jax.random.fold_in)(row_keys_B, state.step_B)
    state = step(plan, logits_fn, warp_fn, config, state, block_BxL, budget_B,
                 step_keys_B, active_B)
    one = active_B.astype(jnp.int32)
    return state.replace(block_step_B=state.block_step_B + one, step_B=state.step_B + one)

  init = LoopState(tokens_BxL=tokens_BxL, draft_features_BxLxF=draft_features_BxLxF,
                   cur_block_B=jnp.full((batch,), -1, jnp.int32),
                   block_step_B=jnp.zeros((batch,), jnp.int32),
                   step_B=jnp.zeros((batch,), jnp.int32), stats=stats, bad_logits_B=bad_B,
                   draft_tokens_BxL=draft_tokens_BxL, context=context)
  # Every step commits at least one token per unfinished row, except ancestral
  # steps, which may commit none but end each block within its step budget; the
  # bound only guards against a plan that commits nothing.
  max_steps = length + (config.steps or 0)
  final = jax.lax.while_loop(
      lambda s: jnp.any(s.tokens_BxL == config.mask_id) & (jnp.max(s.step_B) < max_steps),
      body, init)
  stats = final.stats.replace(tokens=jnp.sum(masked_BxL, axis=1).astype(jnp.int32),
                              sequences=(final.stats.sequences + unit - 1) // unit)
  return SampleResult(tokens=final.tokens_BxL, stats=stats), final.bad_logits_B
