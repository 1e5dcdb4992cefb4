"""Compiling a jitted function on a thread while the caller does other startup work.

A training run's first step waits for the step's compile (15.7 s for the 85M GPU config
on an H100, compile and first step) after the parameters' init (6.5 s there). The compile
needs only the arguments' shapes, dtypes and shardings, so `CompileAhead` starts it on
a thread from abstract arguments, and the init, restore and placement run meanwhile.
JAX shares its lowering and compilation caches between `fn.lower(...).compile()` and
`fn(...)`: once `wait` returns, the first call with concrete arguments of the same
shapes, dtypes and shardings (committed, as placed arrays are) compiles nothing.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from absl import logging


class CompileAhead:
  """`fn.lower(*abstract_args).compile()` on a background thread."""

  def __init__(self, fn: Callable[..., Any], *abstract_args: Any):
    """Args:
      fn: a `jax.jit`-wrapped function.
      *abstract_args: its arguments as `jax.ShapeDtypeStruct` pytrees, each leaf with
        the sharding the real argument will have.
    """
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._compile, args=(fn, abstract_args),
                                    name="compile-ahead", daemon=True)
    self._thread.start()

  def _compile(self, fn: Callable[..., Any], abstract_args: tuple[Any, ...]) -> None:
    try:
      fn.lower(*abstract_args).compile()
    except Exception as e:  # pylint: disable=broad-except  # the real call raises it again
      self._error = e

  def wait(self) -> BaseException | None:
    """Waits for the compile; returns what it raised, if anything (logged as a warning:
    the first real call then compiles, and raises, on its own)."""
    self._thread.join()
    if self._error is not None:
      logging.warning("compiling ahead failed (the first call compiles again): %s: %s",
                      type(self._error).__name__, self._error)
    return self._error
