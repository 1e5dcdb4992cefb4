"""Sample quality on real text, judged by an independent causal model, at matched call budgets.

    python -m experiments.text_quality --config=experiments/configs/text_quality.py \
        --workdir=runs/text_quality [--config.text_quality.num_samples=128]

Trains the judge and the diffusion models that are missing in --workdir (resuming
interrupted runs; finished ones are only restored), samples every sampler of the grid
unconditionally and after held-out prefixes, and writes text_quality.{json,md,png}
and text_quality_info.json to --workdir; prints the table.
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fef_jax import compile_cache
from fef_jax.eval import text_experiment
from fef_jax.eval import text_quality

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/text_quality.py",
                                          "Training + text-quality config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/text_quality",
                               "One run directory per model, and the results.")


def main(argv):
  del argv
  compile_cache.enable()
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  rows, info = text_experiment.run(_CONFIG.value, _WORKDIR.value)
  paths = text_quality.write(rows, _WORKDIR.value, info)
  print(text_quality.format_table(rows))
  print(f"trained in {info['train_seconds']:.0f} s, evaluated in "
        f"{info['evaluate_seconds']:.0f} s")
  print("written:", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
