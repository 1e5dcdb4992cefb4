"""Every experiment config loads, overrides work, and the model sizes are what they claim."""
import importlib
import json
import os
import subprocess
import sys

import types

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import pytest

from fef_jax import models
from fef_jax.train import memory
from fef_jax.train import optim
from fef_jax.train import run
from fef_jax.train import step as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["tiny", "shakespeare", "gpu", "gpu_350m", "gpu_1b", "tpu_pod", "gsm8k"]


def _model(config, vocab_size=258, length=None):
  assert config.model.head_layers == 0  # no config trains a speculative head by default
  source = types.SimpleNamespace(vocab_size=vocab_size, mask_id=vocab_size)
  return run.model_config(config, source, length or config.data.get("length", 16))


def _command_line_config(*overrides):
  """The tiny config as `experiments.train` parses it with these flags."""
  argv = ["train", f"--config={os.path.join(REPO, 'experiments', 'configs', 'tiny.py')}",
          *overrides]
  flag_values = flags.FlagValues()
  # The overrides become flags when the config flag is defined, read from sys_argv.
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_a_valid_model_config(name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  assert config.optimizer.warmup_steps <= config.optimizer.total_steps
  assert models.num_params(_model(config)) > 0


@pytest.mark.parametrize("name,low,high", [("gpu", 80e6, 130e6), ("gpu_350m", 300e6, 400e6),
                                           ("gpu_1b", 1.2e9, 1.4e9)])
def test_gpu_configs_have_the_parameters_they_claim_and_fit_one_h100(name, low, high):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  model_cfg = _model(config)
  assert low < models.num_params(model_cfg) < high
  optimizer = optim.make_optimizer(optim.OptimizerConfig(**dict(config.optimizer)))
  state = jax.eval_shape(lambda key: train_lib.create_train_state(
      models.init_params(model_cfg, key), optimizer, key), jax.random.key(0))
  estimate = memory.estimate(model_cfg, config.batch_size, config.data.length, state)
  assert estimate["params"] == 4 * models.num_params(model_cfg)  # float32 master weights
  # JAX's default pool on an H100 80GB HBM3 (81559 MiB): 75% of the card.
  h100_pool = int(0.75 * 81559 * 2**20)
  assert memory.fit_warning(estimate, h100_pool) is None, memory.format_estimate(estimate)


def test_fit_warning_names_the_fixes_only_past_the_headroom():
  limit = 10 * 2**30
  fits = {"total": int(memory.HEADROOM * limit)}
  assert memory.fit_warning(fits, limit) is None
  assert memory.fit_warning({"total": 10**15}, None) is None  # no known limit (CPU)
  warning = memory.fit_warning({"total": fits["total"] + 1}, limit)
  assert "batch_size" in warning and "remat" in warning and "10.00 GiB" in warning


@pytest.mark.parametrize("flag,remat,policy", [
    (None, False, "none"), ("none", False, "none"), ("full", True, "full"),
    ("True", True, "full"), ("false", False, "none"),
    ("dots_saveable", "dots_saveable", "dots_saveable"),
    ("dots_with_no_batch_dims_saveable", "dots_with_no_batch_dims_saveable",
     "dots_with_no_batch_dims_saveable")])
def test_remat_takes_every_policy_name_on_the_command_line(flag, remat, policy):
  config = _command_line_config(*([f"--config.model.remat={flag}"] if flag else []))
  model_cfg = _model(config)
  assert model_cfg.remat == remat and type(model_cfg.remat) is type(remat)
  assert model_cfg.remat_policy == policy
  if policy in ("none", "full"):  # as model configs printed when the configs held bools
    assert f"remat={remat}," in repr(model_cfg)


@pytest.mark.parametrize("flag,dtype", [(None, jnp.float32), ("float32", jnp.float32),
                                        ("bfloat16", jnp.bfloat16), ("float16", jnp.float16)])
def test_the_compute_dtype_is_set_on_the_command_line_by_name(flag, dtype):
  config = _command_line_config(*([f"--config.model.dtype={flag}"] if flag else []))
  model_cfg = _model(config)
  assert model_cfg.dtype is dtype
  # JAX's scalar type, as model configs printed when the configs held it.
  assert f"dtype=<class 'jax.numpy.{jnp.dtype(dtype).name}'>" in repr(model_cfg)


def test_an_unknown_compute_dtype_is_an_error_naming_the_field():
  with pytest.raises(ValueError, match="config.model.dtype must be one of"):
    _model(_command_line_config("--config.model.dtype=int8"))


def test_an_unknown_remat_policy_is_an_error_naming_the_field():
  config = _command_line_config("--config.model.remat=everything")
  with pytest.raises(ValueError, match="remat must be a bool or one of"):
    _model(config)


def test_tpu_pod_config_shards_and_lowers_on_8_simulated_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "pod_check.py")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  # Every parameter but the norm scales is split 8 ways: one device holds an eighth.
  assert all(name.endswith("['scale']") for name in report["unsharded_params"])
  sharded = report["param_bytes"] - report["unsharded_param_bytes"]
  assert report["param_bytes_per_device"] == sharded // 8 + report["unsharded_param_bytes"]
  assert report["memory_per_device"]["total"] < 16 * 2**30  # a TPU v5e chip's HBM


def test_unknown_config_key_on_the_command_line_is_an_error(tmp_path):
  done = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}",
                         "--config.optimizer.no_such_key=3"], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode != 0 and "no_such_key" in done.stderr
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_can_switch_to_block_causal_attention(name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  config.model.attention = "block_causal"
  config.model.block_length = 4
  model = _model(config, length=16)
  assert (model.attention, model.block_length) == ("block_causal", 4)
