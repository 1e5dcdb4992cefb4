"""Wall-clock seconds of named phases (startup of a training run, or any other)."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Phases:
  """Accumulates wall-clock seconds per phase name, in the order phases first ran.

  Use as `with phases("data"): ...`; a phase entered twice adds up.
  """

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

  def summary(self) -> str:
    """One line: `name 1.23 s, ...` and the total."""
    parts = [f"{name} {seconds:.2f} s" for name, seconds in self.seconds.items()]
    return ", ".join(parts) + f" (total {sum(self.seconds.values()):.2f} s)"
