"""The op-profile benchmark: trace aggregation, and a CPU run end to end."""
import json
import os
import subprocess
import sys

import pytest

from fef_jax.bench import op_profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _event(pid, name, dur):
  return {"ph": "X", "pid": pid, "tid": 1, "name": name, "ts": 0, "dur": dur}


def test_summaries_are_per_process_and_per_run():
  events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            _event(1, "dispatch", 100), _event(1, "dispatch", 60),
            _event(7, "fusion.1", 10), _event(7, "fusion.1", 14), _event(7, "gemm", 40),
            _event(7, "gemm", 30), _event(7, "copy", 6),
            {"ph": "i", "pid": 7, "name": "instant", "ts": 0}]
  device, host = op_profile.summarize(events, runs=2)  # sorted by process name
  assert host["process"] == "/host:CPU" and "device_us_per_run" not in host
  assert host["events_per_run"] == 1.0
  assert host["top"] == [{"name": "dispatch", "us_per_run": 80.0, "count_per_run": 1.0}]
  assert device["process"] == "/device:GPU:0"
  assert device["events_per_run"] == 2.5
  assert device["device_us_per_run"] == pytest.approx((10 + 14 + 40 + 30 + 6) / 2)
  assert [op["name"] for op in device["top"]] == ["gemm", "fusion.1", "copy"]
  assert op_profile.summarize(events, runs=1, top=1)[0]["top"] == [
      {"name": "gemm", "us_per_run": 70.0, "count_per_run": 2.0}]


def test_bad_arguments_are_rejected_before_any_work():
  with pytest.raises(ValueError, match="masked"):
    op_profile.measure(["first_hitting"], length=8, masked=9)
  with pytest.raises(ValueError, match="runs"):
    op_profile.measure(["first_hitting"], runs=0)


@pytest.mark.slow
def test_the_benchmark_traces_each_sampler_on_cpu(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark_profile", f"--workdir={tmp_path}",
       "--d_model=16", "--num_layers=1", "--length=8", "--masked=4", "--vocab_size=8",
       "--runs=2", "--samplers=first_hitting,fef:block_length=2;cache=exact;window=2"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.loads((tmp_path / "op_profile.json").read_text())["rows"]
  assert [r["sampler"] for r in rows] == ["first_hitting",
                                          "fef:block_length=2,cache=exact,window=2"]
  assert rows[0]["nfe"] == 4.0  # first-hitting: one call per masked position
  for row in rows:
    assert row["ms_per_call"] > 0
    host = [p for p in row["processes"] if p["process"].startswith("/host")]
    assert host and host[0]["events_per_run"] > 0 and host[0]["top"]
    assert row["loops"][0]["depth"] == 1 and row["loops"][0]["ops"] > 0
  # FeF over the cache: its rounds are a loop inside the loop of steps.
  assert max(loop["depth"] for loop in rows[1]["loops"] if loop["ops"] > 20) == 2
  assert "### `first_hitting`, batch 1" in (tmp_path / "op_profile.md").read_text()
  assert all(isinstance(loop["copies"], list) for row in rows for loop in row["loops"])
  assert " copies)" in (tmp_path / "op_profile.md").read_text()
