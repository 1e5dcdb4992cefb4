"""Byte-level masked diffusion on tiny Shakespeare (CPU-sized; the file is read from a path)."""
import ml_collections

from experiments.configs import tiny


def get_config() -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.batch_size = 64
  config.eval_batch_size = 128
  config.data = ml_collections.ConfigDict(dict(
      kind="text", path="../shared/data/tinyshakespeare/input.txt", length=128,
      eval_fraction=0.05, tokenizer="byte"))
  config.model.update(d_model=128, num_layers=4, num_heads=4, mlp_dim=384)
  config.optimizer.total_steps = 3000
  config.optimizer.warmup_steps = 200
  config.loss.prefix_fraction = 0.1
  config.checkpoint.every = 500
  config.sample.samplers = ()  # no task checker for free text
  config.sample.every = 1000
  config.sample.num_periodic = 4
  config.sample.periodic_samplers = ("fef:steps=16,window=8", "confidence:steps=16")
  return config
