"""Confidence-aware parallel decoding (Fast-dLLM): threshold and factor rules.

Threshold rule: commit every masked position of the current block whose
proposal probability exceeds `threshold`. Factor rule (when `factor` is set):
with confidences sorted `c_1 >= c_2 >= ...`, commit the largest `n` such that
`(n + 1) (1 - c_n) < factor`. Both always commit at least the most confident
position, so every step makes progress. The number of steps is adaptive.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax.samplers import selection
from fef_jax.samplers.config import SamplerConfig
from fef_jax.samplers.loop import StepContext


def plan(config: SamplerConfig, ctx: StepContext) -> jax.Array:
  """bool[B, L]: the positions the threshold (or factor) rule commits."""
  confidence_BxL = selection.scores("confidence", ctx.log_probs_BxLxV, ctx.x0_BxL, ctx.uniform_BxN)
  if config.factor is None:
    count_B = jnp.sum(ctx.eligible_BxL & (confidence_BxL > config.threshold), axis=1)
  else:
    # Ascending sort of -confidence is the descending sort of confidence.
    count_B = selection.sorted_prefix_size(
        -confidence_BxL, ctx.eligible_BxL,
        lambda neg_c_BxL, n_BxL: (n_BxL + 1) * (1.0 + neg_c_BxL) < config.factor)
  return selection.top_k(confidence_BxL, ctx.eligible_BxL, jnp.maximum(count_B, 1))
