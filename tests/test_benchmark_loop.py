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
    assert r["bare_ms"] > 0 and r["in_loop_ms"] > 0 and r["ms_per_token"] > 0
    if r["sampler"] == "first_hitting":  # one call per masked position: 2 and 6 of 8
      assert r["calls"] == [2, 6]


def test_a_cached_round_is_measured_against_the_block_call_it_evaluates(tmp_path):
  command = [sys.executable, "-m", "experiments.benchmark_loop", f"--workdir={tmp_path}",
             "--d_models=16", "--num_layers=1", "--length=16", "--vocab_size=8",
             "--block_length=4", "--batches=2", "--repeats=2",
             "--samplers=first_hitting,fef:block_length=4;cache=exact;window=2,"
             "fef:window=2;order=parity;cache=prefix"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  # A round evaluates B * W = 4 copies of the 4-position window.
  assert "| 4 × 4 positions |" in done.stdout
  rows = json.loads((tmp_path / "loop_cost.json").read_text())["rows"]
  plain, cached, prefix = rows
  assert (plain["rows_per_call"], plain["positions_per_row"]) == (2, 16)
  assert (cached["rows_per_call"], cached["positions_per_row"]) == (4, 4)
  # A prefix round runs the B = 2 drafted states whole (and a block per copy beside).
  assert (prefix["rows_per_call"], prefix["positions_per_row"]) == (2, 16)
  assert cached["block_length"] == 4
  assert cached["per_call_over_bare"] == pytest.approx(cached["per_call_ms"]
                                                       / cached["in_loop_ms"])
