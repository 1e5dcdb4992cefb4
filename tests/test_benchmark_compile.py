"""The sampler compile benchmark: end to end at tiny sizes, and what it counts."""
import json
import os
import subprocess
import sys

import pytest

from fef_jax.bench import sampler_compile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(d_model=64, num_layers=1, length=8, masked=3, vocab_size=8, batch=2)


def test_new_parameters_compile_nothing_as_arguments_and_anew_as_constants():
  rows = sampler_compile.measure(["fef:steps=1,window=2", "first_hitting"], **TINY)
  assert [(r["sampler"], r["mode"]) for r in rows] == [
      ("fef:steps=1,window=2", "arguments"), ("fef:steps=1,window=2", "constants"),
      ("first_hitting", "arguments"), ("first_hitting", "constants")]
  for r in rows:
    assert r["new_params_compiles"] == (0 if r["mode"] == "arguments" else 1), r
    assert r["cache_bytes_written"] is None
    assert min(r["first_s"], r["new_params_s"], r["warm_s"]) > 0
    assert r["num_params"] > 0


def test_bad_requests_raise():
  with pytest.raises(ValueError, match="modes"):
    sampler_compile.measure(["first_hitting"], modes=("inline",), **TINY)
  with pytest.raises(ValueError, match="masked"):
    sampler_compile.measure(["first_hitting"], **dict(TINY, masked=9))
  with pytest.raises(ValueError, match="cache"):
    sampler_compile.measure(["fef:block_length=2,cache=exact"], **TINY)


def test_benchmark_runs_end_to_end_and_measures_the_cache(tmp_path):
  cache = tmp_path / "cache"
  command = [sys.executable, "-m", "experiments.benchmark_compile",
             f"--workdir={tmp_path}", f"--cache_dir={cache}", "--d_model=64",
             "--num_layers=1", "--length=8", "--masked=3", "--vocab_size=8",
             "--samplers=fef:steps=1;window=2", "--modes=arguments"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "`fef:steps=1,window=2` | arguments" in done.stdout
  (row,) = json.loads((tmp_path / "sampler_compile.json").read_text())["rows"]
  assert row["new_params_compiles"] == 0
  # Programs that compile in under a second are not stored, so only a bound holds here.
  assert 0 <= row["cache_bytes_written"] <= sampler_compile.directory_bytes(str(cache))
