"""The exactness experiment end to end (tiny), and its speculative-sampling expectation."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fef_jax.eval import exactness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expected_rounds_match_a_simulation_of_truncated_geometric_rounds():
  rng = np.random.default_rng(0)
  for set_size, acceptance, window in [(5, 0.8, 4), (32, 0.6, 8), (7, 0.95, 16), (3, 0.0, 2)]:
    trials, total_rounds = 20000, 0
    for _ in range(trials):
      remaining = set_size
      while remaining:
        cap = min(window, remaining)
        committed = 1
        while committed < cap and rng.random() < acceptance:
          committed += 1
        remaining -= committed
        total_rounds += 1
    simulated = total_rounds / trials
    exact = exactness.expected_rounds(set_size, acceptance, window)
    assert abs(simulated - exact) < 0.02 * exact + 0.01, (set_size, simulated, exact)


def test_without_truncation_the_classic_formula_holds():
  # A set much longer than the window: tokens per round -> (1 - b^W) / (1 - b).
  b, window, size = 0.7, 8, 4000
  per_round = size / exactness.expected_rounds(size, b, window)
  assert math.isclose(per_round, (1 - b**window) / (1 - b), rel_tol=2e-3)


def test_set_sizes_follow_the_schedule():
  assert exactness.fef_set_sizes(5, None, None, "commit_set") == [5]
  assert exactness.fef_set_sizes(10, 4, 5, "commit_set") == [3, 2, 3, 2]
  assert exactness.fef_set_sizes(6, 3, None, "joint_then_remask") == [6, 4, 2]


def test_parse_sampler():
  assert exactness.parse_sampler("fef:steps=1,window=4,order=random,factor=none") == (
      "fef", {"steps": 1, "window": 4, "order": "random", "factor": None})
  assert exactness.parse_sampler("threshold:threshold=0.5") == ("threshold", {"threshold": 0.5})
  with pytest.raises(ValueError, match="name=value"):
    exactness.parse_sampler("fef:steps")


def test_experiment_runs_end_to_end_and_fef_beats_one_step_parallel(tmp_path):
  command = [sys.executable, "-m", "experiments.exactness", f"--workdir={tmp_path}",
             "--config.num_samples=4000", "--config.oracles=('phrases','sticky_chain')",
             "--config.samplers=('ancestral:steps=1','first_hitting','fef:steps=1,window=4')"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "| phrases | `fef:steps=1,window=4` |" in done.stdout
  for name in ("results.json", "results.md", "tv_vs_calls.png"):
    assert (tmp_path / name).stat().st_size > 0
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert len(rows) == 6
  by = {(r["oracle"], r["sampler"]): r for r in rows}
  for oracle in ("phrases", "sticky_chain"):
    fef, ancestral = by[(oracle, "fef:steps=1,window=4")], by[(oracle, "ancestral:steps=1")]
    assert fef["tv"] < 2 * fef["tv_floor"] and fef["p_value"] > 1e-3
    assert ancestral["tv"] > 10 * ancestral["tv_floor"] and ancestral["p_value"] < 1e-12
    assert fef["nfe"] < by[(oracle, "first_hitting")]["nfe"]


def test_a_rows_samples_do_not_depend_on_the_rest_of_the_grid():
  def rows(specs):
    grid = exactness.run_grid(("phrases",), specs, 500, seed=3, progress=False)
    return {row["sampler"]: (row["tv"], row["nfe"]) for row in grid}
  alone = rows(("fef:steps=1,window=4",))
  after_another = rows(("first_hitting", "fef:steps=1,window=4"))
  assert alone["fef:steps=1,window=4"] == after_another["fef:steps=1,window=4"]
  keys = {str(jax.random.key_data(exactness.row_key(0, oracle, spec)))
          for oracle in ("phrases", "hmm") for spec in ("first_hitting", "fef")}
  assert len(keys) == 4
