"""Training end to end: the tiny default learns; a run killed with SIGKILL, or stopped by
SIGTERM (which checkpoints first), resumes bit-identically; a diverging run stops at the
first non-finite step and leaves the last good checkpoint intact; a run resumes with other
execution options (remat, compute dtype, attention kernel)."""
import json
import os
import re
import resource
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
  # Every symbol of a permutation depends on every other: even the dilated schedule
  # (which splits PairSum's pairs) falls far short of FeF at about FeF's calls (0.56
  # against 0.99 valid at 3 calls; 512 prompts give a standard error of ~0.02).
  dilated = rows["confidence:steps=3,select=dilated"]
  assert dilated["nfe"] >= fef["nfe"] - 0.1
  assert fef["valid_fraction"] > dilated["valid_fraction"] + 0.2, (fef, dilated)


RESUME_OVERRIDES = ["--config.optimizer.total_steps=60", "--config.optimizer.warmup_steps=10",
                    "--config.checkpoint.every=10", "--config.log_every=5",
                    "--config.eval_every=30", "--config.sample.samplers=()"]


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
  """The uninterrupted run's workdir for given overrides, trained on first use."""
  runs = {}

  def run(*overrides):
    if overrides not in runs:
      runs[overrides] = tmp_path_factory.mktemp("straight")
      subprocess.run(_train_command(runs[overrides], *RESUME_OVERRIDES, *overrides), cwd=REPO,
                     check=True, capture_output=True, timeout=600)
    return runs[overrides]
  return run


def _writing_checkpoints(workdir):
  """Checkpoints orbax has started but not committed (it renames them when complete)."""
  return list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp"))


@pytest.mark.parametrize("signum,mid_write,steps_per_call", [
    (signal.SIGKILL, False, 1), (signal.SIGKILL, True, 1), (signal.SIGTERM, False, 1),
    (signal.SIGTERM, False, 4)],
    ids=["SIGKILL", "SIGKILL_mid_write", "SIGTERM", "SIGTERM_4_steps_per_call"])
def test_a_run_stopped_mid_way_then_resumed_equals_an_uninterrupted_run(
    tmp_path, straight_runs, signum, mid_write, steps_per_call):
  killed = tmp_path / "killed"
  # One step per call (a plain step), or several (4 and 1 here, as logging every 5 steps
  # allows): the stop comes between calls, and the resumed run plans its calls as the
  # uninterrupted one.
  calls = (f"--config.steps_per_call={steps_per_call}",)
  straight_run = straight_runs(*calls)
  # Mid-write: a checkpoint every step keeps an asynchronous write in flight, and the kill
  # waits until one is seen in progress. Checkpoint frequency does not change the math.
  overrides = [*RESUME_OVERRIDES, *calls] + (["--config.checkpoint.every=1"] if mid_write
                                             else [])
  process = subprocess.Popen(_train_command(killed, *overrides), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    metrics = killed / "metrics.jsonl"
    if (metrics.exists() and any(json.loads(l)["step"] >= 25 for l in metrics.open())
        and (not mid_write or _writing_checkpoints(killed))):
      process.send_signal(signum)
      break
    time.sleep(0.005 if mid_write else 0.05)
  _, stderr = process.communicate(timeout=120)
  if signum == signal.SIGKILL:
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    if mid_write:
      assert _writing_checkpoints(killed), "the kill did not land during a checkpoint write"
  else:
    # SIGTERM: a checkpoint at the step it stopped at, then exit status 128 + 15.
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stopped = int(re.search(r"saving a checkpoint at step (\d+)", stderr).group(1))
    assert 25 <= stopped < 60
    assert ocp.CheckpointManager(os.path.abspath(killed / "checkpoints")).latest_step() == stopped
  subprocess.run(_train_command(killed, *RESUME_OVERRIDES, *calls), cwd=REPO, check=True,
                 capture_output=True, timeout=600)
  a, b = _metrics_by_step(straight_run), _metrics_by_step(killed)
  assert sorted(a) == sorted(b)
  for step in a:
    for name in ("loss", "elbo_bits", "grad_norm"):
      assert a[step][name] == b[step][name], (step, name, a[step][name], b[step][name])
  assert a[60]["eval_elbo_bits"] == b[60]["eval_elbo_bits"]
  final_a, final_b = _final_state(straight_run), _final_state(killed)
  leaves_a, leaves_b = jax.tree.leaves(final_a), jax.tree.leaves(final_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("skip", [0, 2])
def test_a_diverging_run_stops_at_the_first_bad_step_and_keeps_its_last_good_checkpoint(
    tmp_path, skip):
  # A learning rate warmed up towards 1e6 overflows the update within ~20 steps, and
  # every step after it too (so skipping them cannot save the run).
  overrides = ["--config.optimizer.learning_rate=1e6", "--config.optimizer.warmup_steps=20000",
               "--config.optimizer.total_steps=20001", "--config.checkpoint.every=5",
               "--config.log_every=1", "--config.sample.samplers=()", "--config.sample.every=0",
               f"--config.skip_nonfinite_steps={skip}"]
  done = subprocess.run(_train_command(tmp_path, *overrides), cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode != 0
  if skip:
    found = re.search(r"training diverged: steps (\d+)-(\d+) were all non-finite .*"
                      r"the last checkpoint, step (\d+), is intact", done.stderr)
    assert found, done.stderr[-3000:]
    bad, last_bad, kept = map(int, found.groups())
    assert last_bad - bad == skip  # skip + 1 bad steps in a row
    assert 0 < kept <= last_bad and kept % 5 == 0  # a skipped step saves the unchanged state
  else:
    found = re.search(r"training diverged at step (\d+): .*the last checkpoint, step (\d+), "
                      r"is intact", done.stderr)
    assert found, done.stderr[-3000:]
    bad, kept = int(found.group(1)), int(found.group(2))
    assert 0 < kept < bad and kept % 5 == 0
  manager = ocp.CheckpointManager(os.path.abspath(tmp_path / "checkpoints"))
  assert manager.latest_step() == kept
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(_final_state(tmp_path))
             if np.issubdtype(np.asarray(leaf).dtype, np.floating))
  logged = _metrics_by_step(tmp_path)
  if skip:  # every skipped step up to a logged one is counted in it
    assert any(step >= bad for step in logged)
    for step, row in logged.items():
      assert row["skipped_steps"] >= max(0, step - bad + 1), (step, row)
  else:
    assert max(logged) < bad  # nothing was logged from the bad step on


def test_a_full_disk_stops_training_clearly_and_the_last_checkpoint_resumes(tmp_path):
  overrides = ["--config.optimizer.warmup_steps=0", "--config.checkpoint.every=5",
               "--config.log_every=5", "--config.sample.samplers=()", "--config.sample.every=0",
               "--config.data.num_examples=2000"]
  subprocess.run(_train_command(tmp_path, *overrides, "--config.optimizer.total_steps=10"),
                 cwd=REPO, check=True, capture_output=True, timeout=600)

  def full_disk():  # checkpoint files are ~0.5-2 MB; Python turns SIGXFSZ into EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, resource.RLIM_INFINITY))

  longer = _train_command(tmp_path, *overrides, "--config.optimizer.total_steps=20")
  done = subprocess.run(longer, cwd=REPO, capture_output=True, text=True, timeout=600,
                        preexec_fn=full_disk)
  assert done.returncode == 1, done.stderr[-3000:]
  found = re.search(r"error: could not write the checkpoint of step (\d+) to (\S+): "
                    r".*File too large.*step 10, is intact", done.stderr)
  assert found, done.stderr[-3000:]
  assert int(found.group(1)) in (15, 20)
  assert ocp.CheckpointManager(os.path.abspath(tmp_path / "checkpoints")).latest_step() == 10
  resumed = subprocess.run(longer, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert max(_metrics_by_step(tmp_path)) == 20
  assert ocp.CheckpointManager(os.path.abspath(tmp_path / "checkpoints")).latest_step() == 20


def _final_state(workdir):
  """Every array of the last checkpoint (params, optimizer, EMA, key, step)."""
  manager = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  return restored["state"]


def test_a_run_resumes_with_other_execution_options(tmp_path):
  # Remat, the compute dtype and the attention kernel change how a step computes, not the
  # state: a run trained without them resumes with them (here: from the command line).
  small = ["--config.model.d_model=16", "--config.model.num_layers=1",
           "--config.model.num_heads=2", "--config.model.mlp_dim=32",
           "--config.optimizer.warmup_steps=1", "--config.steps_per_call=1",
           "--config.log_every=2", "--config.eval_every=2", "--config.checkpoint.every=2",
           "--config.sample.every=0", "--config.sample.samplers=()"]
  subprocess.run(_train_command(tmp_path, *small, "--config.optimizer.total_steps=2"),
                 cwd=REPO, check=True, capture_output=True, timeout=600)
  done = subprocess.run(_train_command(tmp_path, *small, "--config.optimizer.total_steps=4",
                                       "--config.model.remat=full",
                                       "--config.model.dtype=bfloat16",
                                       "--config.model.attention_impl=xla"),
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps.count(2) == 1 and max(steps) == 4  # resumed at step 2, not started again
  assert ocp.CheckpointManager(os.path.abspath(tmp_path / "checkpoints")).latest_step() == 4
