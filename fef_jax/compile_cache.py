"""JAX's persistent compilation cache, as the experiment entry points turn it on.

A rerun of a config (a resumed training run, a second comparison, the next evaluation of
a checkpoint) then loads its compiled programs from disk instead of compiling them
again: XLA:GPU took 19.9 s to compile the training step of `experiments/configs/gpu.py`
on an H100, and each sampler 1.5-6 s (BENCHMARKS.md). Programs that compile in under a
second (`jax_persistent_cache_min_compile_time_secs`) are not stored. JAX keys entries
on the program, the compiler flags, the device and its own version, so a stale entry is
never used.

The benchmark entry points leave it off: what they time is the compile itself.
"""
from __future__ import annotations

import os

import jax

ENV_VAR = "FEF_JAX_CACHE_DIR"
DEFAULT_DIR = os.path.join("~", ".cache", "fef_jax", "xla")


def enable() -> str | None:
  """Turns the persistent compilation cache on and returns its directory.

  The directory is, in order: the one JAX is already configured with (e.g. by
  `JAX_COMPILATION_CACHE_DIR`), `$FEF_JAX_CACHE_DIR`, or `~/.cache/fef_jax/xla`. An
  empty `FEF_JAX_CACHE_DIR=` leaves the cache off (and returns None), unless JAX was
  configured with one. The directory is created if missing.

  Raises:
    OSError: the directory cannot be created.
  """
  directory = jax.config.jax_compilation_cache_dir
  if not directory:
    directory = os.environ.get(ENV_VAR, DEFAULT_DIR)
    if not directory:
      return None
    directory = os.path.expanduser(directory)
    jax.config.update("jax_compilation_cache_dir", directory)
  os.makedirs(directory, exist_ok=True)
  return directory
