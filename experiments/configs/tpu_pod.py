"""A TPU pod slice: the GPU model, data-parallel across hosts with parameters split 8 ways.

Launch the same command on every host; `jax.distributed.initialize()` finds the
others. Batch size is global and must divide by the number of devices.
"""
import ml_collections

from experiments.configs import gpu


def get_config() -> ml_collections.ConfigDict:
  config = gpu.get_config()
  config.batch_size = 512
  config.model.remat = "full"
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=8, tensor=1))
  return config
