"""One GPU, ~345M parameters (24 layers, d=1024), bf16 compute, byte-level Shakespeare.

Memory (printed at startup): ~5.5 GiB of float32 parameters, AdamW moments and EMA, and
~50 GiB of activations estimated at batch 64 x 512 without rematerialization (fits one
80 GB H100; set --config.model.remat=True for larger batches or smaller GPUs).
"""
import ml_collections

from experiments.configs import gpu


def get_config() -> ml_collections.ConfigDict:
  config = gpu.get_config()
  config.model.update(d_model=1024, num_layers=24, num_heads=16, mlp_dim=3328)
  config.optimizer.learning_rate = 3e-4
  return config
