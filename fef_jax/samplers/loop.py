"""The denoising loop shared by every sampler.

One `lax.while_loop` over steps runs until no row has masks. Each step looks at
the lowest unfinished block of every row and hands a `StepContext` to the
method's *plan* (which positions to commit). Two *deciders* fill them in:
`independent` (each position from its own marginal at the current state: one
call per step, the usual parallel decoding) and the FeF deciders, which draw the
set from the prefix-conditioned factorization by speculative verification.
All randomness is derived per row from `fold_in(row_key, row_step)`, so a row's
result does not depend on the other rows of the batch.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from fef_jax import speculative
from fef_jax import warp
from fef_jax.samplers import selection
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
    keys_B: per-row PRNG keys reserved for the plan.
  """
  eligible_BxL: jax.Array
  remaining_B: jax.Array
  steps_left_B: jax.Array
  steps_per_block_B: jax.Array
  log_probs_BxLxV: jax.Array
  x0_BxL: jax.Array
  keys_B: jax.Array


Plan = Callable[[SamplerConfig, StepContext], jax.Array]


@flax.struct.dataclass
class LoopState:
  tokens_BxL: jax.Array
  logits_BxLxV: Optional[jax.Array]  # FeF only: draft logits carried across steps
  cur_block_B: jax.Array
  block_step_B: jax.Array
  step_B: jax.Array
  stats: SampleStats
  bad_logits_B: jax.Array


def _split_rows(keys_B: jax.Array, num: int) -> list[jax.Array]:
  keys_BxN = jax.vmap(lambda k: jax.random.split(k, num))(keys_B)
  return [keys_BxN[:, i] for i in range(num)]


def _propose(log_probs_BxLxV: jax.Array, keys_B: jax.Array) -> jax.Array:
  return jax.vmap(jax.random.categorical)(keys_B, log_probs_BxLxV).astype(jnp.int32)


def _context(config: SamplerConfig, state: LoopState, block_BxL, steps_per_block_B,
             log_probs_BxLxV, x0_keys_B, plan_keys_B) -> StepContext:
  masked_BxL = state.tokens_BxL == config.mask_id
  eligible_BxL = masked_BxL & (block_BxL == state.cur_block_B[:, None])
  return StepContext(
      eligible_BxL=eligible_BxL,
      remaining_B=jnp.sum(eligible_BxL, axis=1).astype(jnp.int32),
      steps_left_B=jnp.maximum(steps_per_block_B - state.block_step_B, 1),
      steps_per_block_B=steps_per_block_B,
      log_probs_BxLxV=log_probs_BxLxV,
      x0_BxL=_propose(log_probs_BxLxV, x0_keys_B),
      keys_B=plan_keys_B)


def independent_step(plan: Plan, logits_fn: LogitsFn, warp_fn, config: SamplerConfig,
                     state: LoopState, block_BxL, steps_per_block_B, step_keys_B,
                     active_B) -> LoopState:
  """Commits the plan's positions, each drawn from its marginal at the current state."""
  x0_keys_B, plan_keys_B = _split_rows(step_keys_B, 2)
  logits_BxLxV, bad_B = speculative.call_denoiser(logits_fn, state.tokens_BxL, config.mask_id)
  ctx = _context(config, state, block_BxL, steps_per_block_B, warp_fn(logits_BxLxV),
                 x0_keys_B, plan_keys_B)
  commit_BxL = plan(config, ctx) & ctx.eligible_BxL
  one = active_B.astype(jnp.int32)
  stats = state.stats.replace(nfe=state.stats.nfe + one,
                              sequences=state.stats.sequences + one,
                              rounds=state.stats.rounds + one)
  return state.replace(tokens_BxL=jnp.where(commit_BxL, ctx.x0_BxL, state.tokens_BxL),
                       stats=stats, bad_logits_B=state.bad_logits_B | (bad_B & active_B))


def fef_step(plan: Plan, logits_fn: LogitsFn, warp_fn, config: SamplerConfig,
             state: LoopState, block_BxL, steps_per_block_B, step_keys_B,
             active_B) -> LoopState:
  """Decides the plan's set exactly (FeF), by speculative verification rounds.

  `commit_set`: the plan's set is drawn from its prefix-factorized joint.
  `joint_then_remask`: every eligible position is drawn jointly, then a
  uniformly random subset of the plan's size is kept and the rest re-masked
  (the reverse transition; a value-independent choice, so still exact).
  """
  x0_keys_B, plan_keys_B, order_keys_B, keep_keys_B, spec_keys_B = _split_rows(step_keys_B, 5)
  ctx = _context(config, state, block_BxL, steps_per_block_B,
                 warp_fn(state.logits_BxLxV), x0_keys_B, plan_keys_B)
  chosen_BxL = plan(config, ctx) & ctx.eligible_BxL
  decide_BxL = ctx.eligible_BxL if config.mode == "joint_then_remask" else chosen_BxL
  order_rule = "position" if config.order == "left_to_right" else config.order
  rank_BxL = selection.rank_by_score(
      selection.scores(order_rule, ctx.log_probs_BxLxV, ctx.x0_BxL, order_keys_B), decide_BxL)
  decided = speculative.decide_set(
      logits_fn, warp_fn, state.tokens_BxL, state.logits_BxLxV, rank_BxL,
      jnp.sum(decide_BxL, axis=1).astype(jnp.int32), spec_keys_B, state.stats,
      window=config.window, mask_id=config.mask_id)
  tokens_BxL = decided.tokens_BxL
  if config.mode == "joint_then_remask":
    keep_BxL = selection.top_k(
        selection.scores("random", ctx.log_probs_BxLxV, ctx.x0_BxL, keep_keys_B),
        decide_BxL, jnp.sum(chosen_BxL, axis=1))
    tokens_BxL = jnp.where(decide_BxL & ~keep_BxL, config.mask_id, tokens_BxL)
  return state.replace(tokens_BxL=tokens_BxL, logits_BxLxV=decided.draft_logits_BxLxV,
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
    key: PRNG key (split into one key per row).
    config: resolved options (static).
    plan: the method's choice of positions to commit at each step.

  Returns:
    (SampleResult, bool[B] flags of rows whose logits had NaN or +inf).
  """
  batch, length = tokens_BxL.shape
  warp_fn = functools.partial(warp.warp_log_probs, mask_id=config.mask_id,
                              temperature=config.temperature, top_k=config.top_k,
                              top_p=config.top_p)
  masked_BxL = tokens_BxL == config.mask_id
  block_length = config.block_length or length
  block_BxL = selection.generation_blocks(masked_BxL, block_length)
  budget_B = steps_per_block(config, masked_BxL, block_length)
  row_keys_B = jax.random.split(key, batch)
  stats = SampleStats.zeros(batch)
  logits_BxLxV, bad_B = None, jnp.zeros((batch,), bool)
  step = independent_step
  if config.method == "fef":
    step = fef_step
    logits_BxLxV, bad_B = speculative.call_denoiser(logits_fn, tokens_BxL, config.mask_id)
    stats = stats.replace(nfe=stats.nfe + 1, sequences=stats.sequences + 1)

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

  init = LoopState(tokens_BxL=tokens_BxL, logits_BxLxV=logits_BxLxV,
                   cur_block_B=jnp.full((batch,), -1, jnp.int32),
                   block_step_B=jnp.zeros((batch,), jnp.int32),
                   step_B=jnp.zeros((batch,), jnp.int32), stats=stats, bad_logits_B=bad_B)
  # Every step commits at least one token per unfinished row, except ancestral
  # steps, which may commit none but end each block within its step budget; the
  # bound only guards against a plan that commits nothing.
  max_steps = length + (config.steps or 0)
  final = jax.lax.while_loop(
      lambda s: jnp.any(s.tokens_BxL == config.mask_id) & (jnp.max(s.step_B) < max_steps),
      body, init)
  stats = final.stats.replace(tokens=jnp.sum(masked_BxL, axis=1).astype(jnp.int32))
  return SampleResult(tokens=final.tokens_BxL, stats=stats), final.bad_logits_B
