"""One GPU, ~85M parameters (12 layers, d=768), bf16 compute, byte-level Shakespeare.

On one H100 80GB (2026-12-06, `experiments.benchmark_train`): 239k tokens/s, 13.7% MFU,
with the devices waiting for the host for 32% of a step (BENCHMARKS.md, GPU).
"""
import ml_collections

from experiments.configs import shakespeare


def get_config() -> ml_collections.ConfigDict:
  config = shakespeare.get_config()
  config.batch_size = 64
  config.data.length = 512
  config.model.update(d_model=768, num_layers=12, num_heads=12, mlp_dim=2048,
                      dtype="bfloat16")
  config.optimizer.learning_rate = 6e-4
  config.optimizer.total_steps = 20_000
  config.optimizer.warmup_steps = 1000
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint.every = 1000
  return config
