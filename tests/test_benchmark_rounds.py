"""The round-cost benchmark end to end, at tiny sizes."""
import json
import os
import subprocess
import sys

import pytest

from fef_jax.bench import round_cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_runs_end_to_end(tmp_path):
  command = [sys.executable, "-m", "experiments.benchmark_rounds", f"--workdir={tmp_path}",
             "--d_models=32", "--lengths=32", "--span=8", "--windows=2,4", "--batch=2",
             "--num_layers=1", "--vocab_size=16", "--repeats=2", "--tokens_per_round=3",
             "--dtype=bfloat16"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "| 32 | 32 | 8 | 4 |" in done.stdout
  for suffix in ("json", "md", "png"):
    assert (tmp_path / f"round_cost.{suffix}").stat().st_size > 0
  written = json.loads((tmp_path / "round_cost.json").read_text())
  # CPU timings depend on the CPU and the cores the process may use: both are recorded.
  assert written["host"]["cpu_model"] and written["host"]["usable_cpus"] >= 1
  rows = written["rows"]
  assert [(r["length"], r["window"]) for r in rows] == [(32, 2), (32, 4)]
  for r in rows:
    assert r["dtype"] == "bfloat16"
    assert r["ideal_block_units"] == r["window"] * 8 / r["length"]
    assert r["tokens_per_round"] == min(3.0, r["window"])
    # Blocks of 8: the sampler refreshes once per block (fusing would cost more positions);
    # the fused call is still timed (L = 32 >= 3S).
    cached = r["block_units"] + r["refresh_units"] * r["tokens_per_round"] / 8
    assert r["cached_round_units"] == pytest.approx(cached) and r["fused_units"] > 0
    assert r["speedup_cached"] == pytest.approx(r["tokens_per_round"] / cached)
    approx = r["block_units"] + r["approx_refresh_units"] * r["tokens_per_round"] / 8
    assert r["approx_round_units"] == pytest.approx(approx)
    assert r["speedup_approx"] == pytest.approx(r["tokens_per_round"] / approx)
    assert r["speedup_whole"] == pytest.approx(r["tokens_per_round"] / r["whole_units"])
    head = r["head_units"] + r["backbone_units"] * r["tokens_per_round"] / 8
    assert r["head_round_units"] == pytest.approx(head)
    assert r["speedup_head"] == pytest.approx(r["tokens_per_round"] / head)
    assert r["speedup_prefix"] == pytest.approx(r["tokens_per_round"] / r["prefix_units"])
    assert min(r["single_ms"], r["whole_ms"], r["block_ms"], r["refresh_ms"], r["head_ms"],
               r["backbone_ms"], r["prefix_ms"]) > 0


def test_length_must_be_a_multiple_of_the_span():
  with pytest.raises(ValueError, match="multiple"):
    round_cost.measure(32, 20, 8, [2], batch=1, num_layers=1, vocab_size=8,
                       tokens_per_round=1.0, repeats=1)
