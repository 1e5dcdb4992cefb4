"""Compare every sampler's accuracy and speed on trained models (trains them first if needed).

    python -m experiments.compare --config=experiments/configs/compare.py --workdir=runs/compare
        [--config.compare.num_prompts=256] [--config.compare.batch_sizes=1,8,256]
        [--config.compare.models="('bidirectional',)"]

Each model of `config.compare.models` (`fef_jax.eval.compare.MODELS`: `bidirectional`,
and `block_causal_head`, the same backbone block-causal with a speculative head,
sampled with the exact cache and the head's drafts) trains in --workdir/<model>;
training resumes from (or stops at) its checkpoints there, so a second run only
samples. Every model's sampler grid runs at each batch size (`config.compare.samplers`
replaces the bidirectional model's, `config.compare.cached_samplers` the other's).
Writes comparison.{json,md,png} to --workdir (one table per model and batch size)
and prints the tables.
"""
import os
import platform

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fef_jax import compile_cache
from fef_jax.bench import timing
from fef_jax.eval import compare
from fef_jax.models import spec_head
from fef_jax.train import run

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/compare.py",
                                          "Training + comparison config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Checkpoints and results.")


def main(argv):
  del argv
  compile_cache.enable()
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  try:
    compare.check_config(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  rows, models = [], {}
  for name in config.compare.models:
    model_config = compare.training_config(config, name)
    out = run.train(model_config, os.path.join(_WORKDIR.value, name))
    task = out["source"].task
    logits_fn = spec_head.make_denoiser(out["model"], out["state"].ema_params)
    # The same prompts and keys for every model.
    prompts, _ = task.sample(np.random.default_rng(config.seed + 5),
                             config.compare.num_prompts)
    specs = compare.samplers_for(model_config, name, task.answer_length)
    for batch_size in config.compare.batch_sizes:
      rows += [{"model": name, **row} for row in compare.compare(
          logits_fn, task, prompts, specs, jax.random.key(config.seed), batch_size=batch_size,
          parts=config.compare.parts, progress=True)]
    models[name] = {"attention": model_config.model.attention,
                    "block_length": model_config.model.block_length,
                    "head_layers": model_config.model.head_layers,
                    "train_steps": int(out["state"].step), "final_metrics": out["metrics"]}
  info = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "host": timing.host_info(), "jax": jax.__version__,
          "python": platform.python_version(),
          "task": config.data.task, "task_kwargs": dict(config.data.task_kwargs),
          "models": models}
  paths = compare.write(rows, _WORKDIR.value, info)
  print(compare.format_table(rows))
  print("host:", info["host"])
  print("written:", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
