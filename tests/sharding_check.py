"""Run as a script under 8 simulated CPU devices (see test_sharding.py): trains the tiny
transformer for a few steps on one device and on a (data=2, fsdp=4) and a
(data=2, fsdp=2, tensor=2) mesh, and in one call of all steps (`train_steps`) on the
first mesh, from the same state and batches, once with plain SGD
and once with the project's AdamW, and prints per optimizer and mesh, as one JSON line,
what the test needs to bound the differences by round-off: per step the single-device
loss and gradient norm, the sharded loss and the L2 distance of the two parameter sets
before the step; and after the last step the largest parameter difference."""
import functools
import json

import jax
import numpy as np
import optax

from fef_jax import models
from fef_jax.data import synthetic
from fef_jax.train import data_source
from fef_jax.train import optim
from fef_jax.train import sharding
from fef_jax.train import step as train_lib

LEARNING_RATE = 1e-2
MESHES = {"data2_fsdp4": (2, 4, 1), "data2_fsdp2_tensor2": (2, 2, 2)}


def _params_l2_distance(a, b) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64) - np.asarray(y)))
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def _params_max_abs(params) -> float:
  return max(float(np.max(np.abs(np.asarray(p)))) for p in jax.tree.leaves(params))


def _run_report(steps, single_states, sharded):
  final = single_states[-1].params
  return {
      "steps": steps,
      "param_max_abs_diff": max(
          float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
          for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(sharded.params))),
      "param_max_abs": max(_params_max_abs(final), _params_max_abs(single_states[0].params)),
      "sharded_specs": [str(leaf.sharding.spec) for leaf in jax.tree.leaves(sharded.params)]}


def main():
  assert jax.device_count() == 8, jax.devices()
  task = synthetic.Permutation(alphabet_size=8, length=5)
  arrays = data_source.task_arrays(task, 64, seed=0)
  config = models.TransformerConfig(vocab_size=task.vocab_size, mask_id=task.mask_id,
                                    max_length=arrays["tokens"].shape[1], d_model=32,
                                    num_layers=2, num_heads=4, mlp_dim=64)
  model = models.Transformer(config)
  apply_fn = lambda p, x, v, t: model.apply({"params": p}, x, v, t)
  optimizers = {
      "sgd": optax.sgd(LEARNING_RATE),
      "adamw": optim.make_optimizer(optim.OptimizerConfig(
          learning_rate=LEARNING_RATE, warmup_steps=0, total_steps=10)),
  }
  loss_cfg = train_lib.LossConfig(mask_id=task.mask_id, prefix_fraction=0.25)
  batches = [{k: v[i * 32:(i + 1) * 32] for k, v in arrays.items()} for i in range(2)] * 2
  report = {"learning_rate": LEARNING_RATE, "tokens_per_batch": int(batches[0]["tokens"].size),
            "d_model": config.d_model, "mlp_dim": config.mlp_dim,
            "vocab_size": config.vocab_size, "num_layers": config.num_layers, "runs": {}}
  for opt_name, optimizer in optimizers.items():
    state = train_lib.create_train_state(models.init_params(config, jax.random.key(0)),
                                         optimizer, jax.random.key(1))
    step = functools.partial(train_lib.train_step, apply_fn=apply_fn, optimizer=optimizer,
                             config=loss_cfg)
    single_step = jax.jit(step)
    single_states = [jax.device_put(state, jax.devices()[0])]
    single_metrics = []
    for batch in batches:
      new_state, metrics = single_step(single_states[-1],
                                       jax.device_put(batch, jax.devices()[0]))
      single_states.append(new_state)
      single_metrics.append({k: float(metrics[k]) for k in ("loss", "grad_norm")})
    for mesh_name, sizes in MESHES.items():
      mesh = sharding.make_mesh(*sizes)
      shardings = sharding.state_shardings(state, mesh)
      sharded = jax.device_put(state, shardings)
      sharded_step = jax.jit(step, out_shardings=(shardings, None))
      steps = []
      for batch, before, single in zip(batches, single_states, single_metrics):
        distance = _params_l2_distance(before.params, sharded.params)
        sharded, metrics = sharded_step(sharded, sharding.shard_batch(batch, mesh))
        steps.append(dict(single, sharded_loss=float(metrics["loss"]),
                          params_l2_distance_before=distance))
      report["runs"][f"{opt_name}/{mesh_name}"] = _run_report(steps, single_states, sharded)
    # All steps in one call (`train_steps`, batches stacked and sharded on their second
    # axis), on the first mesh. The parameters before step i come from a call of the
    # first i steps, the losses from the call of all of them.
    mesh = sharding.make_mesh(*MESHES["data2_fsdp4"])
    shardings = sharding.state_shardings(state, mesh)
    scanned_call = jax.jit(functools.partial(train_lib.train_steps, apply_fn=apply_fn,
                                             optimizer=optimizer, config=loss_cfg),
                           out_shardings=(shardings, None))

    def scanned(count, state=state):
      stacked = {k: np.stack([batch[k] for batch in batches[:count]]) for k in batches[0]}
      return scanned_call(jax.device_put(state, shardings),
                          sharding.shard_batch(stacked, mesh, stacked=True))
    before = [state] + [scanned(count)[0] for count in range(1, len(batches))]
    sharded, metrics = scanned(len(batches))
    steps = [dict(single, sharded_loss=float(metrics["loss"][i]),
                  params_l2_distance_before=_params_l2_distance(single_states[i].params,
                                                                before[i].params))
             for i, single in enumerate(single_metrics)]
    report["runs"][f"{opt_name}/scanned_data2_fsdp4"] = _run_report(steps, single_states,
                                                                    sharded)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
