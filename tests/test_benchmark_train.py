"""The training benchmark runs end to end on CPU and its accounting is consistent."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax.bench import train_cost
from fef_jax.models import transformer
from fef_jax.train import memory
from fef_jax.train import optim
from fef_jax.train import step as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_train_writes_a_consistent_breakdown(tmp_path):
  done = subprocess.run([sys.executable, "-m", "experiments.benchmark_train",
                         "--config=experiments/configs/tiny.py", "--steps=2",
                         "--config.steps_per_call=4", "--profile_steps=4",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "benchmark_train.json").read_text())["rows"][0]
  assert "host overhead" in (tmp_path / "benchmark_train.md").read_text()
  phases = result["startup_s"]
  assert list(phases) == ["imports", "data", "init", "restore", "place", "writer",
                          "compile+first step"]
  assert all(seconds >= 0 for seconds in phases.values())
  assert result["startup_total_s"] == pytest.approx(sum(phases.values()))
  for name in ("compile_s", "device_step_s", "host_batch_s", "unprefetched_step_s",
               "pipelined_step_s", "checkpoint_call_s"):
    assert result[name] > 0, name
  assert result["checkpoint_total_s"] >= result["checkpoint_call_s"]
  assert result["dispatch_s"] > 0 and "dispatch, resident batch" in (
      tmp_path / "benchmark_train.md").read_text()
  for loop in ("unprefetched_host_s", "pipelined_host_s"):
    assert set(result[loop]) == {"batch", "call"} and min(result[loop].values()) > 0, loop
  assert 0 <= result["host_overhead"] < 1
  # The op profile of 4 steps: the host's thunks on a CPU, no device process to be busy.
  processes = {p["process"]: p for p in result["profile"]}
  assert processes and all(p["events_per_run"] > 0 and p["top"] for p in processes.values())
  assert result["device_busy"] is None
  assert "Op profile of steps as trained" in (tmp_path / "benchmark_train.md").read_text()
  assert list((tmp_path / "scratch" / "trace").rglob("*.trace.json.gz"))
  # Four steps per call (as trained), every time per step.
  assert result["steps_per_call"] == 4
  assert "4 step(s) per call" in (tmp_path / "benchmark_train.md").read_text()
  # The tiny config's numerics, as the row says them (a CPU runs XLA's attention).
  assert (result["dtype"], result["remat"], result["attention"]) == ("float32", "none", "xla")
  assert "float32 compute, remat none, xla attention" in (
      tmp_path / "benchmark_train.md").read_text()
  assert result["tokens_per_step"] == result["batch_size"] * result["length"]
  assert result["tokens_per_second"] == pytest.approx(
      result["tokens_per_step"] / result["pipelined_step_s"])
  assert result["tflops"] == pytest.approx(
      result["flops_per_token"] * result["tokens_per_second"] / 1e12)
  assert result["mfu"] is None  # a CPU has no known peak
  # XLA counts the whole step (once, as the body of the call's loop over steps): the model's
  # 6N + attention, plus the loss's softmax and the optimizer's few dozen FLOPs per
  # parameter per step, spread over the step's tokens.
  assert 0.95 < result["xla_flops_per_token"] / result["flops_per_token"] < 1.3
  assert result["memory"]["total"] == sum(
      result["memory"][k] for k in ("params", "optimizer", "ema", "activations"))


def test_memory_estimate_counts_the_state_exactly_and_remat_saves_activations():
  config = transformer.TransformerConfig(vocab_size=11, mask_id=11, max_length=16, d_model=32,
                                         num_layers=2, num_heads=4, mlp_dim=64)
  params = transformer.init_params(config, jax.random.key(0))
  optimizer = optim.make_optimizer(optim.OptimizerConfig(warmup_steps=0, total_steps=10))
  state = train_lib.create_train_state(params, optimizer, jax.random.key(1))
  nbytes = lambda tree: sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))  # noqa
  estimate = memory.estimate(config, 8, 16, state, data_shards=2)
  assert estimate["params"] == estimate["ema"] == nbytes(params) == 4 * transformer.num_params(
      config)
  assert estimate["optimizer"] == nbytes(state.opt_state)
  assert estimate["activations"] == memory.activation_bytes(config, 4, 16)
  remat = transformer.TransformerConfig(**{**config.__dict__, "remat": True})
  assert memory.activation_bytes(remat, 4, 16) < estimate["activations"]
  half = transformer.TransformerConfig(**{**config.__dict__, "dtype": jnp.bfloat16})
  assert memory.activation_bytes(half, 4, 16) < estimate["activations"]
  chunked = memory.activation_bytes(config, 4, 16, logits_chunk=4)
  assert estimate["activations"] - chunked == 2 * 4 * 4 * (16 - 4) * config.vocab_size
  assert "total" in memory.format_estimate(estimate)
  with pytest.raises(ValueError, match="data shards"):
    memory.estimate(config, 7, 16, state, data_shards=2)


def test_device_busy_is_the_first_devices_kernel_time_over_the_step():
  profile = [{"process": "/host:CPU", "events_per_run": 10.0, "top": []},
             {"process": "/device:GPU:0", "events_per_run": 900.0, "top": [],
              "device_us_per_run": 60_000.0}]
  assert train_cost._device_busy(profile, 0.1) == pytest.approx(0.6)  # pylint: disable=protected-access
  assert train_cost._device_busy(profile[:1], 0.1) is None  # pylint: disable=protected-access
  assert train_cost._device_busy(None, 0.1) is None  # pylint: disable=protected-access
