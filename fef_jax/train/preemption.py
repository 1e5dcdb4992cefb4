"""Preemption: SIGTERM asks the training loop to checkpoint and stop, instead of killing it.

Clusters and TPU/GPU schedulers send SIGTERM some seconds before they kill a job.
`PreemptionWatch` turns it into a flag that the loop reads after each step
(`fef_jax.train.run.train`), so the run saves its state at the current step,
waits for the write to finish, and raises `Preempted`; the next run resumes from
that checkpoint exactly.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional


class Preempted(Exception):
  """The run stopped on a preemption signal after checkpointing `step`."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} after saving a checkpoint "
                     f"at step {step}; rerun the same command to resume")
    self.step, self.signum = step, signum


class PreemptionWatch:
  """Context manager: while active, SIGTERM sets `signum` instead of ending the process.

  Outside the main thread (where Python cannot install handlers) it watches
  nothing. The previous handler is restored on exit.
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self._signals = signals
    self._previous: dict[int, object] = {}
    self.signum: Optional[int] = None

  def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
    del frame
    self.signum = signum

  def __enter__(self) -> "PreemptionWatch":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self._signals}
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
