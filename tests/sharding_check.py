"""Run as a script under 8 simulated CPU devices (see test_sharding.py): trains the tiny
transformer for a few steps on one device and on a (data=2, fsdp=4) and a
(data=2, fsdp=2, tensor=2) mesh from the same state and batches, and prints, per
mesh, the largest differences of loss and parameters as one JSON line."""
import functools
import json

import jax
import numpy as np

from fef_jax import models
from fef_jax.data import synthetic
from fef_jax.train import data_source
from fef_jax.train import optim
from fef_jax.train import sharding
from fef_jax.train import step as train_lib


def main():
  assert jax.device_count() == 8, jax.devices()
  task = synthetic.Permutation(alphabet_size=8, length=5)
  arrays = data_source.task_arrays(task, 64, seed=0)
  config = models.TransformerConfig(vocab_size=task.vocab_size, mask_id=task.mask_id,
                                    max_length=arrays["tokens"].shape[1], d_model=32,
                                    num_layers=2, num_heads=4, mlp_dim=64)
  model = models.Transformer(config)
  apply_fn = lambda p, x, v, t: model.apply({"params": p}, x, v, t)
  optimizer = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=0,
                                                         total_steps=10))
  loss_cfg = train_lib.LossConfig(mask_id=task.mask_id, prefix_fraction=0.25)
  state = train_lib.create_train_state(models.init_params(config, jax.random.key(0)),
                                       optimizer, jax.random.key(1))
  step = functools.partial(train_lib.train_step, apply_fn=apply_fn, optimizer=optimizer,
                           config=loss_cfg)
  batches = [{k: v[i * 32:(i + 1) * 32] for k, v in arrays.items()} for i in range(2)] * 2

  single = jax.device_put(state, jax.devices()[0])
  single_step = jax.jit(step)
  single_losses = []
  for batch in batches:
    single, metrics = single_step(single, jax.device_put(batch, jax.devices()[0]))
    single_losses.append(float(metrics["loss"]))
  report = {}
  for name, sizes in {"data2_fsdp4": (2, 4, 1), "data2_fsdp2_tensor2": (2, 2, 2)}.items():
    mesh = sharding.make_mesh(*sizes)
    shardings = sharding.state_shardings(state, mesh)
    sharded = jax.device_put(state, shardings)
    sharded_step = jax.jit(step, out_shardings=(shardings, None))
    losses = []
    for batch, single_loss in zip(batches, single_losses):
      sharded, metrics = sharded_step(sharded, sharding.shard_batch(batch, mesh))
      losses.append((single_loss, float(metrics["loss"])))
    param_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                     zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)))
    report[name] = {"losses": losses, "param_max_abs_diff": param_diff,
                    "sharded_specs": [str(leaf.sharding.spec)
                                      for leaf in jax.tree.leaves(sharded.params)]}
  print(json.dumps(report))


if __name__ == "__main__":
  main()
