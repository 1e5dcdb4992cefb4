"""Stopping a diverged run before it overwrites good checkpoints.

The training loop does not wait for the device after each step. `FiniteWatch`
keeps every step's loss and gradient norm as device scalars and, when asked
(before each log line and each checkpoint), fetches them in one transfer.

By default (`max_skipped_in_a_row=0`) it raises `TrainingDiverged` naming the
first step whose loss or gradient norm is not finite. A step with a finite
gradient norm makes a finite update, so the state saved after a passed check is
finite, and a diverged state is never saved.

With `max_skipped_in_a_row = N > 0` the train step is expected to skip such
steps (`train_step(..., skip_nonfinite=True)` leaves the state unchanged):
each skipped step is logged as a warning and counted, and the run stops with
`TrainingDiverged` only when more than `N` steps in a row were skipped, since a
run that skips every step learns nothing. The saved state stays finite either way.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import numpy as np
from absl import logging


class TrainingDiverged(FloatingPointError):
  """A training step produced a NaN or infinite loss or gradient norm."""


class FiniteWatch:
  """The loss and gradient norm of every step since the last `check`.

  Attributes:
    skipped: how many non-finite steps were skipped so far (0 when they stop the run).
  """

  def __init__(self, max_skipped_in_a_row: int = 0):
    """Args:
      max_skipped_in_a_row: 0 stops at the first non-finite step; `N > 0`
        tolerates up to `N` consecutive skipped steps.

    Raises:
      ValueError: `max_skipped_in_a_row` is not an int >= 0.
    """
    if isinstance(max_skipped_in_a_row, bool) or not isinstance(max_skipped_in_a_row, int) or (
        max_skipped_in_a_row < 0):
      raise ValueError(f"max_skipped_in_a_row must be an int >= 0, got "
                       f"{max_skipped_in_a_row!r}")
    self._max_in_a_row = max_skipped_in_a_row
    self._pending: list[tuple[int, Any]] = []
    self._in_a_row: list[int] = []  # the current run of skipped steps
    self.skipped = 0

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    """Records step `step`'s metrics (device arrays; nothing is transferred): scalars,
    or stacked per step (`[K]`, from `step.train_steps`) for the `K` steps ending at `step`."""
    self._pending.append((step, (metrics["loss"], metrics["grad_norm"])))

  def check(self, last_saved_step: Optional[int]) -> None:
    """Checks every step recorded since the last call.

    Raises:
      TrainingDiverged: (default) at the first non-finite step, or, when
        skipping, once more than `max_skipped_in_a_row` consecutive steps were
        non-finite; the message names the step(s) and the last checkpoint
        (which is left as it was).
    """
    if not self._pending:
      return
    steps, values = [], []
    for last, pair in zip([step for step, _ in self._pending],
                          jax.device_get([pair for _, pair in self._pending])):
      losses, grad_norms = np.atleast_1d(pair[0]), np.atleast_1d(pair[1])
      steps += range(last - len(losses) + 1, last + 1)
      values += zip(losses, grad_norms)
    self._pending = []
    kept = ("no checkpoint was saved" if last_saved_step is None
            else f"the last checkpoint, step {last_saved_step}, is intact")
    for step, (loss, grad_norm) in zip(steps, values):
      if math.isfinite(float(loss)) and math.isfinite(float(grad_norm)):
        self._in_a_row = []
        continue
      if not self._max_in_a_row:
        raise TrainingDiverged(
            f"training diverged at step {step}: loss={float(loss)}, "
            f"grad_norm={float(grad_norm)}; {kept} (lower the learning rate or "
            f"raise warmup, then rerun to resume from it)")
      self._in_a_row.append(step)
      self.skipped += 1
      logging.warning("step %d: loss=%s, grad_norm=%s is not finite; its update was skipped "
                      "(%d skipped in a row)", step, float(loss), float(grad_norm),
                      len(self._in_a_row))
      if len(self._in_a_row) > self._max_in_a_row:
        raise TrainingDiverged(
            f"training diverged: steps {self._in_a_row[0]}-{step} were all non-finite "
            f"(loss={float(loss)}, grad_norm={float(grad_norm)} at step {step}) and skipped, "
            f"more than the {self._max_in_a_row} in a row that skip_nonfinite_steps allows; "
            f"{kept} (lower the learning rate or raise warmup, then rerun to resume from it)")
