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
  score_keys_B, size_keys_B = jnp.moveaxis(
      jax.vmap(lambda k: jax.random.split(k, 2))(ctx.keys_B), 1, 0)
  score_BxL = selection.scores(config.select, ctx.log_probs_BxLxV, ctx.x0_BxL, score_keys_B)
  mean_B = selection.commit_count(ctx.remaining_B, ctx.steps_left_B)
  size_B = jax.vmap(lambda k, hi: jax.random.randint(k, (), 1, hi))(size_keys_B, 2 * mean_B)
  size_B = jnp.where(ctx.steps_left_B <= 1, ctx.remaining_B, jnp.minimum(size_B, ctx.remaining_B))
  return selection.top_k(score_BxL, ctx.eligible_BxL, size_B)
