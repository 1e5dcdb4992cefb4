"""Several training steps per call (`config.steps_per_call = K`): which steps go together.

A call of `step.train_steps` runs `K` steps on `K` stacked batches. The training loop
logs, evaluates, samples and checkpoints between calls only, so a call must not
step over a step where one of those is due: `chunk_sizes` plans calls of `K` steps
where none is due inside, and of one step elsewhere (at most two compiled shapes),
from any step a run starts or resumes at. `stacked` draws each planned call's
batches from the batch iterator, in order, so the batches a run sees, and its
resumable position after each call, do not depend on `K`.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np


def checked(steps_per_call: Any) -> int:
  """`steps_per_call`, once it is known to be an int >= 1.

  Raises:
    ValueError: it is not (a bool, a float, zero or negative).
  """
  if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or (
      steps_per_call < 1):
    raise ValueError(f"steps_per_call must be an int >= 1, got {steps_per_call!r}")
  return steps_per_call


def chunk_sizes(start: int, total: int, steps_per_call: int, every: Sequence[int]
                ) -> Iterator[int]:
  """The steps of each call from step `start` until step `total`.

  Args:
    start: the step the run is at (0, or the step it resumes at).
    total: the last step.
    steps_per_call: `K`, the steps a call takes where it can.
    every: periods (0 or None: never) of the loop's work between steps; a call ends
      at each multiple of each of them, and at `total`.

  Yields:
    `K` where steps `start + 1 .. start + K - 1` need nothing between them and
    `start + K <= total`, else 1, until `total` is reached.

  Raises:
    ValueError: `steps_per_call` is not an int >= 1, or a negative period.
  """
  checked(steps_per_call)
  periods = [int(p) for p in every if p]
  if any(p < 0 for p in periods):
    raise ValueError(f"periods must be >= 0, got {list(every)}")
  step = start
  while step < total:
    # The first step after `step` at which each period's work is due.
    due = min([total] + [(step // p + 1) * p for p in periods])
    size = steps_per_call if step + steps_per_call <= due else 1
    yield size
    step += size


def misfit_warning(steps_per_call: int, every: Sequence[int]) -> str | None:
  """A warning when `K = steps_per_call > 1` does not divide every period in `every`
  (then one-step calls fill the gap before each due step, which costs speed, not
  correctness), else None."""
  misfits = [int(p) for p in every if p and int(p) % steps_per_call]
  if steps_per_call == 1 or not misfits:
    return None
  return (f"steps_per_call={steps_per_call} does not divide the periods {misfits} of "
          f"logging, evaluation, samples or checkpoints: one-step calls fill the steps "
          f"before each; choose a steps_per_call that divides them")


def stacked(batches: Iterator[Mapping[str, np.ndarray]], sizes: Iterable[int]
            ) -> Iterator[dict[str, np.ndarray]]:
  """For each `size` in `sizes`, the next `size` batches of `batches`, stacked.

  Yields:
    name -> `[size, *batch_shape]`; ends when `sizes` ends.
  """
  for size in sizes:
    group: list[Mapping[str, Any]] = [next(batches) for _ in range(size)]
    yield {name: np.stack([batch[name] for batch in group]) for name in group[0]}
