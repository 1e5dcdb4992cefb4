"""Stopping a diverged run before it overwrites good checkpoints.

The training loop does not wait for the device after each step. `FiniteWatch`
keeps every step's loss and gradient norm as device scalars and, when asked
(before each log line and each checkpoint), fetches them in one transfer and
raises `TrainingDiverged` naming the first step whose loss or gradient norm is
not finite. A step with a finite gradient norm makes a finite update, so the
state saved after a passed check is finite, and a diverged state is never saved.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax


class TrainingDiverged(FloatingPointError):
  """A training step produced a NaN or infinite loss or gradient norm."""


class FiniteWatch:
  """The loss and gradient norm of every step since the last `check`."""

  def __init__(self):
    self._pending: list[tuple[int, Any]] = []

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    """Records step `step`'s metrics (device arrays; nothing is transferred)."""
    self._pending.append((step, (metrics["loss"], metrics["grad_norm"])))

  def check(self, last_saved_step: Optional[int]) -> None:
    """Raises TrainingDiverged at the first recorded non-finite step, naming it and the
    last checkpoint (which is left as it was)."""
    if not self._pending:
      return
    steps = [step for step, _ in self._pending]
    values = jax.device_get([pair for _, pair in self._pending])
    self._pending = []
    for step, (loss, grad_norm) in zip(steps, values):
      if not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
        kept = ("no checkpoint was saved" if last_saved_step is None
                else f"the last checkpoint, step {last_saved_step}, is intact")
        raise TrainingDiverged(
            f"training diverged at step {step}: loss={float(loss)}, "
            f"grad_norm={float(grad_norm)}; {kept} (lower the learning rate or "
            f"raise warmup, then rerun to resume from it)")
