"""First-hitting sampling: one token per denoiser call, exact.

Each call reveals exactly one masked position of the current block, chosen by
`select` (uniformly at random by default, which is the first-hitting sampler of
masked diffusion; `position` gives left-to-right autoregressive decoding) and
draws it from its marginal given everything revealed so far. With `random`,
`position` or `entropy` the choice depends only on revealed tokens, so with an
exact denoiser the output is an exact draw from the joint (`confidence` scores
the proposal's own value, which biases the choice). It costs one sequential call per
generated token: the reference that faster samplers are measured against. With
`random` or `position` the loop chooses the position before drawing, so a step warps
and draws that position only (`fef_jax.samplers.loop.one_token_step`; `plan` below
is the same choice, used with the other rules).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax.samplers import selection
from fef_jax.samplers.config import SamplerConfig
from fef_jax.samplers.loop import StepContext


def plan(config: SamplerConfig, ctx: StepContext) -> jax.Array:
  """bool[B, L]: the single best-scoring eligible position of each row."""
  score_BxL = selection.scores(config.select, ctx.log_probs_BxLxV, ctx.x0_BxL, ctx.uniform_BxN)
  return selection.top_k(score_BxL, ctx.eligible_BxL, jnp.ones_like(ctx.remaining_B))
