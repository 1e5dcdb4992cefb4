"""The loop-overhead benchmark end to end, at tiny sizes."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loop_benchmark_runs_end_to_end(tmp_path):
  command = [sys.executable, "-m", "experiments.benchmark_loop", f"--workdir={tmp_path}",
             "--d_models=16", "--num_layers=1", "--length=8", "--vocab_size=8",
             "--batches=1,2", "--repeats=2", "--samplers=first_hitting,fef:window=3"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "`fef:window=3`" in done.stdout
  assert (tmp_path / "loop_cost.md").stat().st_size > 0
  rows = json.loads((tmp_path / "loop_cost.json").read_text())["rows"]
  assert [(r["batch"], r["sampler"]) for r in rows] == [
      (1, "first_hitting"), (1, "fef:window=3"), (2, "first_hitting"), (2, "fef:window=3")]
  for r in rows:
    # One-token steps evaluate the B states; a FeF round the B * W copies.
    assert r["rows_per_call"] == r["batch"] * (3 if r["sampler"].startswith("fef") else 1)
    assert r["per_call_over_bare"] == pytest.approx(r["per_call_ms"] / r["in_loop_ms"])
    assert r["bare_ms"] > 0 and r["in_loop_ms"] > 0
    if r["sampler"] == "first_hitting":  # one call per masked position: 2 and 6 of 8
      assert r["calls"] == [2, 6]
