"""The optimizer: AdamW with linear warmup and cosine decay, clipping, optional accumulation.

Precision: the parameters it updates are float32 whatever the model's compute
dtype (`TransformerConfig.dtype` casts them where they are used), so they are
the float32 master weights of bfloat16 training, and the gradients arrive in
float32. Adam's second moment stays float32; `mu_dtype="bfloat16"` keeps the
first moment in bfloat16 (2 bytes per parameter less state to store and stream
through each update).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

MU_DTYPES = (None, "float32", "bfloat16")


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
    mu_dtype: dtype of Adam's first moment, one of `MU_DTYPES`: None keeps the
      parameters' (float32), "bfloat16" halves it; the update is computed in
      float32 either way (optax casts the moment back and forth).

  Raises:
    ValueError: (on construction) a non-positive learning rate, warmup beyond
      the total steps, fewer than 1 accumulation step or an unknown `mu_dtype`.
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
  mu_dtype: str | None = None

  def __post_init__(self):
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if self.total_steps < 1 or self.warmup_steps < 0 or self.warmup_steps > self.total_steps:
      raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got "
                       f"warmup_steps={self.warmup_steps}, total_steps={self.total_steps}")
    if self.grad_accum_steps < 1:
      raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
    if self.mu_dtype not in MU_DTYPES:
      raise ValueError(f"mu_dtype must be one of {MU_DTYPES}, got {self.mu_dtype!r}")


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
  mu_dtype = None if config.mu_dtype is None else jnp.dtype(config.mu_dtype)
  parts.append(optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                           weight_decay=config.weight_decay, mask=_decay_mask,
                           mu_dtype=mu_dtype))
  optimizer = optax.chain(*parts)
  if config.grad_accum_steps > 1:
    optimizer = optax.MultiSteps(optimizer, every_k_schedule=config.grad_accum_steps)
  return optimizer
