"""The GPU suite script runs end to end at smoke sizes on any machine (here: the CPU)."""
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_suite_smoke_writes_every_stage(tmp_path):
  env = dict(os.environ, SMOKE="1", PYTHON=sys.executable)
  done = subprocess.run(["bash", "experiments/gpu_suite.sh", str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
  for stage in ("rounds", "loop", "profile", "compare", "compare_long", "compare_permutation",
                "train", "breakdown", "compile"):
    assert f"== {stage}: " in done.stdout
    assert (tmp_path / f"{stage}.log").stat().st_size > 0
  assert json.loads((tmp_path / "rounds" / "round_cost.json").read_text())["rows"]
  assert json.loads((tmp_path / "loop" / "loop_cost.json").read_text())["rows"]
  assert json.loads((tmp_path / "profile" / "op_profile.json").read_text())["rows"]
  rows = json.loads((tmp_path / "compare" / "comparison.json").read_text())["rows"]
  assert sorted({r["batch_size"] for r in rows}) == [1, 8]
  assert {r["model"] for r in rows} == {"bidirectional"}  # the smoke trains one model
  long = json.loads((tmp_path / "compare_long" / "comparison.json").read_text())
  assert {r["model"] for r in long["rows"]} == {"block_causal_head"}
  assert {r["sampler"] for r in long["rows"]} == {
      "first_hitting", "fef:steps=1,order=dilated,window=15"}
  permutation = json.loads(
      (tmp_path / "compare_permutation" / "comparison.json").read_text())
  assert permutation["info"]["task"] == "permutation" and permutation["rows"]
  assert "tokens_per_second" in (tmp_path / "train.log").read_text()
  breakdown = json.loads((tmp_path / "breakdown" / "benchmark_train.json").read_text())
  assert breakdown["rows"][0]["pipelined_step_s"] > 0
  assert breakdown["rows"][0]["profile"]  # the stage traces its steps op by op
  compiled = json.loads((tmp_path / "compile" / "sampler_compile.json").read_text())["rows"]
  assert [r["new_params_compiles"] for r in compiled] == [0, 1, 0, 1]  # arguments, constants


@pytest.mark.slow
def test_gpu_suite_runs_the_chosen_stages_in_order_within_their_limits(tmp_path):
  out, packed = tmp_path / "out", tmp_path / "suite.tgz"
  env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, STAGES="loop rounds:1",
             TAR=str(packed))
  done = subprocess.run(["bash", "experiments/gpu_suite.sh", str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
  assert done.stdout.index("== loop: ") < done.stdout.index("== rounds: ")
  # Bash counts whole seconds, so a stage stopped at 1 s reads 1 or 2 s; `timeout -k 10` may
  # take 10 s more to kill a stage that ignores SIGTERM.
  stopped = re.search(r"== rounds: (\d+) s \(stopped at its limit of 1 s\)", done.stdout)
  assert stopped, done.stdout[-2000:]
  assert 1 <= int(stopped.group(1)) <= 1 + 10 + 1
  assert "== compare" not in done.stdout and not (out / "compare.log").exists()
  assert json.loads((out / "loop" / "loop_cost.json").read_text())["rows"]
  with tarfile.open(packed) as tar:
    names = set(tar.getnames())
  assert {"./loop.log", "./rounds.log", "./loop/loop_cost.json"} <= names


@pytest.mark.slow
def test_gpu_suite_option_stages_train_with_the_options_they_name(tmp_path):
  # At smoke size every breakdown trains the same tiny model; the stages differ in the
  # options they pass, which each row records (on a GPU "auto" attention is cuDNN's).
  stages = {"breakdown_xla": ("bfloat16", "none", "xla"),
            "breakdown_350m_remat": ("bfloat16", "dots_with_no_batch_dims_saveable", "xla"),
            "breakdown_1b": ("bfloat16", "full", "xla")}
  env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, STAGES=" ".join(stages))
  done = subprocess.run(["bash", "experiments/gpu_suite.sh", str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
  for stage, numerics in stages.items():
    row = json.loads((tmp_path / stage / "benchmark_train.json").read_text())["rows"][0]
    assert (row["dtype"], row["remat"], row["attention"]) == numerics, stage
    assert row["pipelined_step_s"] > 0


def test_gpu_suite_rejects_an_unknown_stage(tmp_path):
  env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, STAGES="loop:5 bogus")
  done = subprocess.run(["bash", "experiments/gpu_suite.sh", str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert "unknown stage: bogus" in done.stderr
  assert "== loop" not in done.stdout  # nothing ran
