"""Low-confidence re-masking with semi-autoregressive blocks (LLaDA).

Each step draws a proposal at every masked position of the current block and
keeps the `ceil(remaining / steps_left)` with the highest score (by default the
probability of the proposal); the others stay masked.
"""
from __future__ import annotations

import jax

from fef_jax.samplers import selection
from fef_jax.samplers.config import SamplerConfig
from fef_jax.samplers.loop import StepContext


def plan(config: SamplerConfig, ctx: StepContext) -> jax.Array:
  """bool[B, L]: the best-scoring `ceil(remaining / steps_left)` eligible positions."""
  score_BxL = selection.scores(config.select, ctx.log_probs_BxLxV, ctx.x0_BxL, ctx.uniform_BxN)
  count_B = selection.commit_count(ctx.remaining_B, ctx.steps_left_B)
  return selection.top_k(score_BxL, ctx.eligible_BxL, count_B)
