"""Train a masked diffusion LM, then sample it with FeF and baselines.

    python -m experiments.train --config=experiments/configs/tiny.py --workdir=runs/tiny
        [--config.optimizer.total_steps=3000]

Resumes from the latest intact checkpoint in --workdir. SIGTERM (preemption) saves a
checkpoint at the current step and exits with status 143; a diverged run (NaN or
infinite loss) stops with an error naming the step, before it saves anything after it
(or, with --config.skip_nonfinite_steps=N, skips such steps, up to N in a row). A
checkpoint that cannot be written (disk full) stops with an error naming it; the
earlier checkpoints stay intact.
For task data, prints how often each sampler's answers satisfy the task's constraint
(and writes samples.json).
"""
import json
import os
import sys

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fef_jax import compile_cache
from fef_jax.eval import task_sampling
from fef_jax.models import spec_head
from fef_jax.train import checkpoint
from fef_jax.train import divergence
from fef_jax.train import preemption
from fef_jax.train import run

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/tiny.py",
                                          "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Checkpoints, metrics and samples.")


def main(argv):
  del argv
  compile_cache.enable()
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  config = _CONFIG.value
  try:
    out = run.train(config, _WORKDIR.value)
  except preemption.Preempted as stopped:
    print(stopped, file=sys.stderr)
    sys.exit(128 + stopped.signum)
  except (divergence.TrainingDiverged, checkpoint.CheckpointWriteError) as failed:
    print(f"error: {failed}", file=sys.stderr)
    sys.exit(1)
  print("final:", {k: round(v, 4) for k, v in out["metrics"].items()})
  task = out["source"].task
  if task is None or not config.sample.samplers:
    return
  logits_fn = spec_head.make_denoiser(out["model"], out["state"].ema_params)
  prompts, _ = task.sample(np.random.default_rng(config.seed + 2), config.sample.num_prompts)
  rows = task_sampling.answer_validity(logits_fn, task, prompts, config.sample.samplers,
                                       jax.random.key(config.seed))
  print(task_sampling.format_validity(rows))
  with open(os.path.join(_WORKDIR.value, "samples.json"), "w") as f:
    json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
