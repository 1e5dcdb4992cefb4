"""Run as a script under 8 simulated CPU devices (see test_configs.py): builds the TPU-pod
config's model, optimizer state and mesh abstractly (nothing is allocated), places every
state leaf and the global batch (of one call) by the project's sharding rule, lowers the
jitted train step for those shardings, and prints one JSON line with what the test
checks: the mesh,
the state's bytes in all and on one device, the leaves left unsharded, and the per-device
memory estimate."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import tpu_pod
from fef_jax.models import transformer
from fef_jax.train import memory
from fef_jax.train import optim
from fef_jax.train import run
from fef_jax.train import sharding
from fef_jax.train import step as train_lib

BYTE_VOCAB = 257  # the byte tokenizer's 256 bytes and eos; the mask id is appended


def main():
  config = tpu_pod.get_config()
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  fields = dict(config.model)
  fields.pop("head_layers")
  length = config.data.length
  model_cfg = transformer.TransformerConfig(vocab_size=BYTE_VOCAB, mask_id=BYTE_VOCAB,
                                            max_length=length, **fields)
  optimizer = optim.make_optimizer(optim.OptimizerConfig(**dict(config.optimizer)))
  state = jax.eval_shape(
      lambda key: train_lib.create_train_state(transformer.init_params(model_cfg, key),
                                               optimizer, key), jax.random.key(0))
  shardings = sharding.state_shardings(state, mesh)
  placed = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
  # One call's batches, as the config trains: stacked `[K, B, L]` when K > 1 steps per call.
  batch = run.call_batch_shapes(
      config, {"tokens": jax.ShapeDtypeStruct((1, length), jnp.int32)}, mesh)
  loss_cfg = train_lib.LossConfig(mask_id=BYTE_VOCAB, **dict(config.loss))
  step_fn = run.make_step_fn(config, transformer.Transformer(model_cfg), optimizer, loss_cfg,
                             shardings, mesh)
  step_fn.lower(placed, batch)  # raises on a shape or sharding that does not fit
  unsharded = [jax.tree_util.keystr(path)
               for path, leaf in jax.tree_util.tree_flatten_with_path(placed.params)[0]
               if leaf.sharding.shard_shape(leaf.shape) == leaf.shape]
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  print(json.dumps({
      "devices": jax.device_count(), "mesh": dict(mesh.shape),
      "batch_per_device": config.batch_size // data_shards,
      "param_bytes": int(sum(np.prod(x.shape) * x.dtype.itemsize
                             for x in jax.tree.leaves(state.params))),
      "param_bytes_per_device": memory.estimate(model_cfg, config.batch_size, length, placed,
                                                data_shards)["params"],
      "unsharded_params": unsharded,
      "unsharded_param_bytes": int(sum(
          np.prod(leaf.shape) * leaf.dtype.itemsize
          for path, leaf in jax.tree_util.tree_flatten_with_path(placed.params)[0]
          if jax.tree_util.keystr(path) in unsharded)),
      "memory_per_device": memory.estimate(model_cfg, config.batch_size, length, placed,
                                           data_shards),
  }))


if __name__ == "__main__":
  main()
