"""Randomized unmasking sizes: the step size is drawn at random around the even split.

With `m = ceil(remaining / steps_left)`, each step commits `k ~ Uniform{1..2m-1}`
positions (mean `m`, clipped to what remains; everything at the block's last
step), chosen by `select`, each drawn from its marginal.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax.samplers import selection
from fef_jax.samplers.config import SamplerConfig
from fef_jax.samplers.loop import StepContext


def plan(config: SamplerConfig, ctx: StepContext) -> jax.Array:
  """bool[B, L]: a random number of the best-scoring eligible positions."""
  length = ctx.eligible_BxL.shape[1]
  score_BxL = selection.scores(config.select, ctx.log_probs_BxLxV, ctx.x0_BxL,
                               ctx.uniform_BxN[:, :length])
  mean_B = selection.commit_count(ctx.remaining_B, ctx.steps_left_B)
  # Uniform on {1, ..., 2m - 1} from the last uniform (the clip guards float round-up).
  size_B = jnp.minimum(1 + jnp.floor(ctx.uniform_BxN[:, length] * (2 * mean_B - 1)),
                       2 * mean_B - 1).astype(jnp.int32)
  size_B = jnp.where(ctx.steps_left_B <= 1, ctx.remaining_B, jnp.minimum(size_B, ctx.remaining_B))
  return selection.top_k(score_BxL, ctx.eligible_BxL, size_B)
