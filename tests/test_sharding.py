"""Sharded training (8 simulated CPU devices, data=2 x fsdp=4) equals single-device training."""
import json
import os
import subprocess
import sys

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
  report = json.loads(done.stdout.strip().splitlines()[-1])
  # Same math, different reduction order across devices: float32 round-off only.
  for single, sharded in report["losses"]:
    assert abs(single - sharded) <= 1e-5 * max(1.0, abs(single)), report["losses"]
  assert report["param_max_abs_diff"] < 1e-5, report
  assert any("fsdp" in spec for spec in report["sharded_specs"]), report["sharded_specs"]


def test_partition_rule_splits_the_largest_divisible_dimension():
  assert sharding._leaf_spec((64, 96), 4) == sharding.P(None, "fsdp")
  assert sharding._leaf_spec((30, 7), 4) == sharding.P()
  assert sharding._leaf_spec((128,), 4) == sharding.P()
  assert sharding._leaf_spec((64, 96), 1) == sharding.P()


def test_bad_mesh_and_batch_are_rejected_clearly():
  with pytest.raises(ValueError, match="does not cover"):
    sharding.make_mesh(data=3, fsdp=5)
  mesh = sharding.make_mesh()
  assert mesh.devices.size >= 1
  if mesh.devices.size > 1:
    with pytest.raises(ValueError, match="not divisible"):
      sharding.shard_batch({"tokens": np.zeros((mesh.devices.size + 1, 4))}, mesh)
