"""Exactness experiment: every sampler vs oracle distributions with known joints.

    python -m experiments.exactness [--config=experiments/configs/exactness.py]
        [--config.num_samples=100000] [--workdir=runs/exactness]

Prints the table and writes results.json, results.md and tv_vs_calls.png.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from fef_jax import compile_cache
from fef_jax.eval import exactness

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/exactness.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/exactness", "Where results are written.")


def main(argv):
  del argv
  compile_cache.enable()
  config = _CONFIG.value
  rows = exactness.run_grid(config.oracles, config.samplers, config.num_samples, config.seed)
  print(exactness.format_table(rows))
  paths = exactness.write(rows, config.to_dict(), _WORKDIR.value)
  print("wrote", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
