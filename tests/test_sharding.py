"""Sharded training on 8 simulated CPU devices (data x fsdp, and data x fsdp x tensor)
equals single-device training."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fef_jax.train import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sharded_steps_equal_single_device_steps():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharding_check.py")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  reports = json.loads(done.stdout.strip().splitlines()[-1])
  assert set(reports) == {"data2_fsdp4", "data2_fsdp2_tensor2"}
  for name, report in reports.items():
    # Same math, different reduction order across devices: float32 round-off only.
    for single, sharded in report["losses"]:
      assert abs(single - sharded) <= 1e-5 * max(1.0, abs(single)), (name, report["losses"])
    # Adam divides gradients by their RMS, which turns gradient round-off into
    # update differences of up to ~1e-3 of a step; 4 steps of lr 1e-2 move a
    # parameter by at most 0.04, so 4e-5 is that relative bound.
    assert report["param_max_abs_diff"] < 4e-5, (name, report)
    assert any("fsdp" in spec for spec in report["sharded_specs"]), report["sharded_specs"]
  assert any("tensor" in spec for spec in reports["data2_fsdp2_tensor2"]["sharded_specs"])


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
