"""The optimizer: AdamW with linear warmup and cosine decay, clipping, optional accumulation."""
from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer hyper-parameters.

  Attributes:
    learning_rate: peak learning rate after warmup.
    warmup_steps: linear warmup from 0.
    total_steps: cosine decay horizon (to `final_lr_fraction * learning_rate`).
    final_lr_fraction: learning rate at `total_steps`, as a fraction of the peak.
    weight_decay: decoupled weight decay, applied to matrices only (ndim >= 2).
    b1, b2: Adam moments.
    grad_clip: global-norm clipping threshold (0 disables).
    grad_accum_steps: micro-batches per update (optax.MultiSteps when > 1).
  """
  learning_rate: float = 3e-4
  warmup_steps: int = 100
  total_steps: int = 10_000
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  grad_accum_steps: int = 1

  def __post_init__(self):
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if self.total_steps < 1 or self.warmup_steps < 0 or self.warmup_steps > self.total_steps:
      raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got "
                       f"warmup_steps={self.warmup_steps}, total_steps={self.total_steps}")
    if self.grad_accum_steps < 1:
      raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to `final_lr_fraction` of the peak."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=config.total_steps, end_value=config.learning_rate * config.final_lr_fraction)


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """AdamW (decay on matrices only) after global-norm clipping; accumulated if asked."""
  parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
  parts.append(optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                           weight_decay=config.weight_decay, mask=_decay_mask))
  optimizer = optax.chain(*parts)
  if config.grad_accum_steps > 1:
    optimizer = optax.MultiSteps(optimizer, every_k_schedule=config.grad_accum_steps)
  return optimizer
