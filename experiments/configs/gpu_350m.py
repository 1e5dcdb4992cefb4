"""One GPU, ~345M parameters (24 layers, d=1024), bf16 compute, byte-level Shakespeare.

Memory (printed at startup): ~5.5 GiB of float32 parameters, AdamW moments and EMA, and
~25 GiB of activations estimated at batch 32 x 512 without rematerialization. On an
H100 80GB (JAX's default pool: 75% of the card) batch 32 trains at 28% MFU, while batch
64 (estimated 56 GiB) ran out of memory; set --config.model.remat=full (or another
policy, e.g. dots_with_no_batch_dims_saveable) for larger batches or smaller GPUs.
"""
import ml_collections

from experiments.configs import gpu


def get_config() -> ml_collections.ConfigDict:
  config = gpu.get_config()
  config.model.update(d_model=1024, num_layers=24, num_heads=16, mlp_dim=3328)
  config.batch_size = 32
  config.optimizer.learning_rate = 3e-4
  return config
