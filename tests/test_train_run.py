"""Training end to end: the tiny default learns, and a run killed with SIGKILL resumes
bit-identically."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _train_command(workdir, *overrides):
  return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *overrides]


def _metrics_by_step(workdir):
  """The last logged metrics of every step (a resumed run re-logs the steps it redoes)."""
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      by_step[row["step"]] = row
  return by_step


def test_tiny_default_learns_and_fef_respects_the_constraint(tmp_path):
  done = subprocess.run(_train_command(tmp_path), cwd=REPO, capture_output=True, text=True,
                        timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  final = max(_metrics_by_step(tmp_path).items())[1]
  uniform_bits = np.log2(10) * (1 - 1e-3)  # Permutation(8, 5): V = 10 ids
  assert final["eval_elbo_bits"] < 0.6 * uniform_bits, final
  rows = {r["sampler"]: r for r in json.loads((tmp_path / "samples.json").read_text())}
  fef, parallel = rows["fef:steps=1,window=5"], rows["ancestral:steps=1"]
  assert fef["valid_fraction"] > 0.9, fef
  assert fef["valid_fraction"] > parallel["valid_fraction"] + 0.5, (fef, parallel)
  assert fef["nfe"] < rows["first_hitting"]["nfe"]


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
  overrides = ["--config.optimizer.total_steps=60", "--config.optimizer.warmup_steps=10",
               "--config.checkpoint.every=10", "--config.log_every=5",
               "--config.eval_every=30", "--config.sample.samplers=()"]
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_train_command(straight, *overrides), cwd=REPO, check=True,
                 capture_output=True, timeout=600)
  process = subprocess.Popen(_train_command(killed, *overrides), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    metrics = killed / "metrics.jsonl"
    if metrics.exists() and any(json.loads(l)["step"] >= 25 for l in metrics.open()):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  subprocess.run(_train_command(killed, *overrides), cwd=REPO, check=True,
                 capture_output=True, timeout=600)
  a, b = _metrics_by_step(straight), _metrics_by_step(killed)
  assert sorted(a) == sorted(b)
  for step in a:
    for name in ("loss", "elbo_bits", "grad_norm"):
      assert a[step][name] == b[step][name], (step, name, a[step][name], b[step][name])
  assert a[60]["eval_elbo_bits"] == b[60]["eval_elbo_bits"]
  final_a, final_b = _final_state(straight), _final_state(killed)
  leaves_a, leaves_b = jax.tree.leaves(final_a), jax.tree.leaves(final_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def _final_state(workdir):
  """Every array of the last checkpoint (params, optimizer, EMA, key, step)."""
  manager = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  return restored["state"]
