"""Sharded training on 8 simulated CPU devices (data x fsdp, and data x fsdp x tensor, and
all steps in one call) equals single-device training."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fef_jax.train import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# float32 unit round-off.
_U = 2.0 ** -24


def _gamma(n: int) -> float:
  """Higham's gamma_n = n u / (1 - n u): the worst-case relative error of a float32
  sum or dot product of n terms, whatever the order (relative to the sum of |terms|)."""
  return n * _U / (1 - n * _U)


@pytest.mark.slow
def test_sharded_steps_equal_single_device_steps():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharding_check.py")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  runs = report["runs"]
  assert set(runs) == {f"{opt}/{mesh}" for opt in ("sgd", "adamw")
                       for mesh in ("data2_fsdp4", "data2_fsdp2_tensor2", "scanned_data2_fsdp4")}
  # Sharding changes only the order of float32 reductions, never the math, so every
  # bound below is round-off, derived from the computation rather than from a value one
  # CPU printed (vector width and FMA change the order, not these worst cases). The
  # longest chain of reductions a gradient entry goes through: the sum over the batch's
  # tokens, the contractions of every layer, and the softmax over the vocabulary.
  gamma = _gamma(report["tokens_per_batch"] + report["vocab_size"]
                 + report["num_layers"] * (report["d_model"] + report["mlp_dim"]))
  for name, run in runs.items():
    for i, step in enumerate(run["steps"]):
      # The loss is a weighted mean of non-negative cross-entropies (no cancellation),
      # so each run's round-off is <= gamma * max(1, loss) (the 1: log-softmax of O(1)
      # logits errs in absolute terms); parameters that already differ move it by at most
      # |grad| * |dparams| to first order, doubled for the second-order term.
      bound = (2 * gamma * max(1.0, abs(step["loss"]))
               + 2 * step["grad_norm"] * step["params_l2_distance_before"])
      assert abs(step["loss"] - step["sharded_loss"]) <= bound, (name, i, step, bound)
    assert any("fsdp" in spec for spec in run["sharded_specs"]), (name, run["sharded_specs"])
    if name.startswith("sgd/"):
      # SGD moves a parameter by lr * gradient, so gradient round-off (<= gamma times
      # the gradient's scale, its global norm, in each run) reaches the parameters
      # unamplified; each update is also rounded to the parameters' ulp. Doubled for the
      # feedback of earlier differences through later gradients (lr * curvature << 1).
      # AdamW is not bounded this way: it divides by the gradients' RMS, so the round-off
      # of a near-zero gradient entry becomes a finite step; its losses are checked above.
      steps = len(run["steps"])
      bound = 2 * (2 * gamma * report["learning_rate"]
                   * sum(step["grad_norm"] for step in run["steps"])
                   + 2 * steps * _U * run["param_max_abs"])
      assert run["param_max_abs_diff"] <= bound, (name, run["param_max_abs_diff"], bound)
  assert any("tensor" in spec for spec in runs["sgd/data2_fsdp2_tensor2"]["sharded_specs"])


def test_partition_rule_splits_the_largest_divisible_dimension():
  assert sharding._leaf_spec((64, 96), 4) == sharding.P(None, "fsdp")
  assert sharding._leaf_spec((30, 7), 4) == sharding.P()
  assert sharding._leaf_spec((128,), 4) == sharding.P()
  assert sharding._leaf_spec((64, 96), 1) == sharding.P()


def test_tensor_rule_splits_heads_and_mlp_features_then_fsdp_takes_the_rest():
  # query kernel [D, H, K]: heads over tensor, the model dim over fsdp.
  assert sharding._leaf_spec((64, 4, 16), 2, 2, "query") == sharding.P("fsdp", "tensor", None)
  assert sharding._leaf_spec((4, 16, 64), 1, 2, "out") == sharding.P("tensor", None, None)
  assert sharding._leaf_spec((64, 192), 1, 2, "gate") == sharding.P(None, "tensor")
  assert sharding._leaf_spec((192, 64), 4, 2, "down") == sharding.P("tensor", "fsdp")
  assert sharding._leaf_spec((64, 3, 16), 1, 2, "query") == sharding.P()  # 3 heads: whole
  assert sharding._leaf_spec((64, 96), 1, 2, "embedding") == sharding.P()


def test_state_shardings_find_kernels_inside_optimizer_state():
  mesh = sharding.make_mesh(data=-1)
  tree = {"params": {"mlp": {"up": {"kernel": np.zeros((8, 16))}}},
          "opt": ({"mlp": {"up": {"kernel": np.zeros((8, 16))}}},)}
  paths = [sharding._module_name(path) for path, _ in
           jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths == ["up", "up"]
  assert all(isinstance(s, sharding.NamedSharding)
             for s in jax.tree.leaves(sharding.state_shardings(tree, mesh)))


def test_bad_mesh_and_batch_are_rejected_clearly():
  with pytest.raises(ValueError, match="does not cover"):
    sharding.make_mesh(data=3, fsdp=5)
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh(data=-1, tensor=-1)
  mesh = sharding.make_mesh()
  assert mesh.devices.size >= 1
  if mesh.devices.size > 1:
    with pytest.raises(ValueError, match="not divisible"):
      sharding.shard_batch({"tokens": np.zeros((mesh.devices.size + 1, 4))}, mesh)
