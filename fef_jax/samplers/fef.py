"""FeF: exact prefix-factorized decoding with speculative verification (FeF-DLLM).

The step's set is chosen like LLaDA's (the `ceil(remaining / steps_left)`
best-scoring masked positions of the block, scored on the draft logits so that
choosing costs no call) and then drawn *jointly* from
`prod_j p(x^{s_j} | xt, x^{s<j})` in the given `order` by
`fef_jax.speculative.decide_set`. In `joint_then_remask` mode every masked
position of the block is drawn jointly and a random subset of the same size is
kept. With an exact denoiser both are exact draws from the joint, for any
number of steps (one step per block by default).
"""
from __future__ import annotations

import jax

from fef_jax.samplers import confidence
from fef_jax.samplers.config import SamplerConfig
from fef_jax.samplers.loop import StepContext


def plan(config: SamplerConfig, ctx: StepContext) -> jax.Array:
  """bool[B, L]: the set to decide exactly this step (LLaDA's choice rule)."""
  return confidence.plan(config, ctx)
