"""What the benchmarks share: warm median timings, and their JSON + Markdown output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax

# The extensions XLA:CPU's kernels pick code paths by (vector width, FMA, bf16/fp16, AMX).
_VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def median_seconds(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
  """Median wall-clock seconds of `fn(*args)` over `repeats` calls after a warm-up call
  (each waited for with `jax.block_until_ready`)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def host_info() -> dict[str, Any]:
  """The host CPU: model name, vector extensions of note, L2 size, and the CPUs this
  process may run on.

  CPU timings depend on all of them, and not only in scale: on a 2-core Xeon at
  batch 1, before `fef_jax.unrolled_threefry`, XLA:CPU's thread pool slowed the cached
  FeF samplers by 17-32% and first-hitting by 5% against the same process pinned to
  one core, while on the CPU of earlier runs cached FeF was the faster (BENCHMARKS.md).
  Reads `/proc/cpuinfo` and `/sys` where they exist (Linux); elsewhere the model is
  `platform.processor()` and the rest is left empty.
  """
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
  except OSError:
    pass
  flags = set(fields.get("flags", "").split())
  try:
    with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
      l2 = f.read().strip()
  except OSError:
    l2 = ""
  usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count())
  return {"cpu_model": fields.get("model name") or platform.processor() or "unknown",
          "vector_extensions": [f for f in _VECTOR_EXTENSIONS if f in flags],
          "l2_per_core": l2, "usable_cpus": usable}


def write_results(workdir: str, name: str, rows: Sequence[dict[str, Any]],
                  config: dict[str, Any], table: str) -> dict[str, str]:
  """Writes `name.json` (config, JAX version, backend, devices, host CPU, rows) and
  `name.md` (`table`) into `workdir`; returns their paths by suffix."""
  os.makedirs(workdir, exist_ok=True)
  paths = {suffix: os.path.join(workdir, f"{name}.{suffix}") for suffix in ("json", "md")}
  with open(paths["json"], "w") as f:
    json.dump({"config": config, "jax_version": jax.__version__,
               "backend": jax.default_backend(),
               "devices": [d.device_kind for d in jax.devices()], "host": host_info(),
               "rows": list(rows)}, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(table + "\n")
  return paths
