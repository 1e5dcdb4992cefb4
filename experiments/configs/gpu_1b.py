"""One GPU, ~1.3B parameters (24 layers, d=2048, head dim 128), bf16 compute, rematerialized.

Memory (printed at startup): ~20 GiB of float32 parameters, AdamW moments and EMA, and a
few GiB of activations at batch 64 x 512 with each block rematerialized in the backward
pass; fits one 80 GB H100.
"""
import ml_collections

from experiments.configs import gpu


def get_config() -> ml_collections.ConfigDict:
  config = gpu.get_config()
  config.model.update(d_model=2048, num_layers=24, num_heads=16, mlp_dim=6144, remat="full")
  config.optimizer.learning_rate = 2e-4
  return config
