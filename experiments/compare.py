"""Compare every sampler's accuracy and speed on one trained model (trains it first if needed).

    python -m experiments.compare --config=experiments/configs/compare.py --workdir=runs/compare
        [--config.compare.num_prompts=256] [--config.compare.batch_sizes=1,8,256]

Training resumes from (or stops at) the checkpoints in --workdir, so a second run
only samples. Writes comparison.{json,md,png} to --workdir and prints the table.
"""
import platform

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fef_jax.eval import compare
from fef_jax.models import spec_head
from fef_jax.train import run

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/compare.py",
                                          "Training + comparison config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Checkpoints and results.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  out = run.train(config, _WORKDIR.value)
  task = out["source"].task
  if task is None:
    raise app.UsageError("the comparison needs task data (config.data.kind='task')")
  has_head = isinstance(out["model"], spec_head.SpecHeadTransformer)
  logits_fn = spec_head.make_denoiser(out["model"], out["state"].ema_params)
  prompts, _ = task.sample(np.random.default_rng(config.seed + 5), config.compare.num_prompts)
  specs = config.compare.samplers or compare.default_samplers(
      task.answer_length, head=has_head,
      approximate_cache=(config.model.attention == "bidirectional"
                         and not config.model.time_conditioning),
      exact_cache_block=(config.model.block_length
                         if config.model.attention == "block_causal" else None))
  rows = [row for batch_size in config.compare.batch_sizes
          for row in compare.compare(logits_fn, task, prompts, specs,
                                     jax.random.key(config.seed), batch_size=batch_size,
                                     progress=True)]
  info = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "jax": jax.__version__, "python": platform.python_version(),
          "task": config.data.task, "task_kwargs": dict(config.data.task_kwargs),
          "train_steps": int(out["state"].step), "final_metrics": out["metrics"]}
  paths = compare.write(rows, _WORKDIR.value, info)
  print(compare.format_table(rows))
  print("written:", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
