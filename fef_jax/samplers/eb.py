"""Entropy-bounded sampling (EB-Sampler).

Sorts the masked positions of the current block by entropy (lowest first) and
commits the largest prefix whose summed entropy minus its largest entropy stays
within `gamma` (an upper bound on the dependence error the step may incur).
At least one position is committed per step; the number of steps is adaptive.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax import warp
from fef_jax.samplers import selection
from fef_jax.samplers.config import SamplerConfig
from fef_jax.samplers.loop import StepContext


def plan(config: SamplerConfig, ctx: StepContext) -> jax.Array:
  """bool[B, L]: the lowest-entropy prefix that fits the entropy budget."""
  entropy_BxL = warp.entropy(ctx.log_probs_BxLxV)
  count_B = selection.sorted_prefix_size(
      entropy_BxL, ctx.eligible_BxL,
      lambda h_BxL, n_BxL: jnp.cumsum(h_BxL, axis=1) - h_BxL <= config.gamma)
  return selection.top_k(-entropy_BxL, ctx.eligible_BxL, count_B)
