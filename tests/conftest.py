"""Shared pytest setup: JAX's persistent compilation cache, so reruns skip XLA compiles."""
import os
import pathlib

import jax

_CACHE_DIR = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"


def pytest_configure(config):
  del config
  os.makedirs(_CACHE_DIR, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(_CACHE_DIR))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
