"""Ancestral sampling (MDLM / MD4): the exact reverse of the masking process, step by step.

Between times `t > s` each masked position is revealed independently with
probability `(alpha(s) - alpha(t)) / (1 - alpha(t))` and drawn from its own
marginal (the product of marginals whenever two positions land in one step).
The block's steps sit on the uniform time grid `t = steps_left / steps_per_block`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax import schedules
from fef_jax.samplers.config import SamplerConfig
from fef_jax.samplers.loop import StepContext


def plan(config: SamplerConfig, ctx: StepContext) -> jax.Array:
  """bool[B, L]: masked positions revealed at this step (all of them at the last step)."""
  schedule = schedules.get_schedule(config.schedule)
  t_B = ctx.steps_left_B / ctx.steps_per_block_B
  s_B = (ctx.steps_left_B - 1) / ctx.steps_per_block_B
  alpha_t, alpha_s = schedule.alpha(t_B), schedule.alpha(s_B)
  reveal_B = jnp.where(ctx.steps_left_B <= 1, 1.0,
                       (alpha_s - alpha_t) / jnp.maximum(1.0 - alpha_t, 1e-12))
  length = ctx.eligible_BxL.shape[1]
  return ctx.eligible_BxL & (ctx.uniform_BxN[:, :length] < reveal_B[:, None])
