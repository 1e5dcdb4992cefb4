"""Every experiment config loads, overrides work, and the model sizes are what they claim."""
import importlib
import os
import subprocess
import sys

import pytest

from fef_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["tiny", "shakespeare", "gpu", "tpu_pod", "gsm8k"]


def _model(config, vocab_size=258, length=None):
  fields = dict(config.model)
  assert fields.pop("head_layers") == 0  # no config trains a speculative head by default
  return models.TransformerConfig(vocab_size=vocab_size, mask_id=vocab_size,
                                  max_length=length or config.data.get("length", 16),
                                  **fields)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_a_valid_model_config(name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  assert config.optimizer.warmup_steps <= config.optimizer.total_steps
  assert models.num_params(_model(config)) > 0


def test_gpu_config_has_about_100m_parameters():
  config = importlib.import_module("experiments.configs.gpu").get_config()
  assert 80e6 < models.num_params(_model(config)) < 130e6


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
