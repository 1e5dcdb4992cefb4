"""What the benchmarks share: warm median timings, and their JSON + Markdown output."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax


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


def write_results(workdir: str, name: str, rows: Sequence[dict[str, Any]],
                  config: dict[str, Any], table: str) -> dict[str, str]:
  """Writes `name.json` (config, JAX version, backend, devices, rows) and `name.md`
  (`table`) into `workdir`; returns their paths by suffix."""
  os.makedirs(workdir, exist_ok=True)
  paths = {suffix: os.path.join(workdir, f"{name}.{suffix}") for suffix in ("json", "md")}
  with open(paths["json"], "w") as f:
    json.dump({"config": config, "jax_version": jax.__version__,
               "backend": jax.default_backend(),
               "devices": [d.device_kind for d in jax.devices()], "rows": list(rows)}, f,
              indent=1)
  with open(paths["md"], "w") as f:
    f.write(table + "\n")
  return paths
