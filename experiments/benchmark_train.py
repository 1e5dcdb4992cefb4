"""Training step-time breakdown: startup phases, compile, host batches, device steps,
checkpoints, tokens/s, TFLOP/s and MFU.

    python -m experiments.benchmark_train --config=experiments/configs/shakespeare.py \
        [--steps=10] [--profile_steps=0] [--workdir=runs/benchmark_train]

Writes `benchmark_train.json` and `benchmark_train.md` into --workdir (and a scratch
training run under it; with --profile_steps=N, a `jax.profiler` trace of N steps under
it, for Perfetto or TensorBoard). See `fef_jax.bench.train_cost` for what each number
means.
"""
import time

_START = time.perf_counter()  # before the imports: they are part of a run's startup

# pylint: disable=wrong-import-position
import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fef_jax.bench import timing
from fef_jax.bench import train_cost

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/shakespeare.py",
                                          "Training config to measure.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")
_PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps", 0, "Steps to trace op by op after the timings (0: none); on a GPU the "
    "table then gives the kernels' time per step and the device's busy share.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/benchmark_train", "Output directory.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  imports_s = time.perf_counter() - _START
  result = train_cost.measure(_CONFIG.value, os.path.join(_WORKDIR.value, "scratch"),
                              steps=_STEPS.value, profile_steps=_PROFILE_STEPS.value)
  result["startup_s"] = {"imports": imports_s, **result["startup_s"]}
  result["startup_total_s"] += imports_s
  table = train_cost.format_table(result)
  print(table)
  paths = timing.write_results(_WORKDIR.value, "benchmark_train", [result],
                               {"config": json.loads(_CONFIG.value.to_json_best_effort()),
                                "steps": _STEPS.value, "profile_steps": _PROFILE_STEPS.value},
                               table)
  print("wrote", paths["json"], "and", paths["md"])


if __name__ == "__main__":
  app.run(main)
