"""Where a sampler's time goes, op by op: a `jax.profiler` trace of warm `fj.sample` calls.

For a random-init block-causal transformer (the comparison's backbone by default:
3 layers, d=96, attention blocks of 2, 16 positions, the last 10 masked) and each
sampler spec, `measure` runs `fj.sample` until warm, then traces `runs` calls and
aggregates the trace's complete events per profiler process (the host CPU, and each
accelerator: `/device:GPU:0`, ...):

- `events_per_run`: how many events a call records in that process (on a GPU, about
  its kernel launches and copies);
- `top`: the ops with the most total duration, each with its microseconds and count
  per call. Host events nest (a call's dispatch contains its thunks), so host
  durations are not additive; device kernels are, and `device_us_per_run` sums them.

Besides the trace: `ms_per_call` (wall-clock of one `fj.sample` call, median of warm
untraced calls), `nfe` (its sequential denoiser calls) and `loops` (the ops of each
`while` body of the compiled program, `fef_jax.bench.loop_ops`: what a step and a
round launch, counted without a GPU). What one call costs beyond
its kernels, on a GPU, is `ms_per_call - device_us_per_run / 1000`: launches,
while-loop predicates copied to the host, and the host's own work.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile
from typing import Any, Callable, Sequence

import jax
import numpy as np

import fef_jax as fj
from fef_jax import models
from fef_jax.bench import loop_ops
from fef_jax.bench import timing
from fef_jax.eval.exactness import parse_sampler


def trace_events(fn: Callable[[], Any], runs: int, trace_dir: str) -> list[dict[str, Any]]:
  """The Chrome-trace events of `runs` calls of `fn` (each waited for), traced by
  `jax.profiler` into `trace_dir`.

  Raises:
    FileNotFoundError: the profiler wrote no Perfetto trace.
  """
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0  # Python frames would slow each call several-fold
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True, profiler_options=options)
  try:
    for _ in range(runs):
      jax.block_until_ready(fn())
  finally:
    jax.profiler.stop_trace()
  found = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
  if not found:
    raise FileNotFoundError(f"jax.profiler wrote no *.trace.json.gz under {trace_dir}")
  with gzip.open(found[-1], "rt") as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def summarize(events: Sequence[dict[str, Any]], runs: int, top: int = 12
              ) -> list[dict[str, Any]]:
  """Per profiler process (named by its `process_name` metadata event): the complete
  (`"ph": "X"`) events per run, and the `top` op names by total duration (microseconds
  and count per run). Processes whose name starts with `/device:` also get
  `device_us_per_run`, the sum of their events' durations."""
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  durations: dict[Any, collections.Counter] = collections.defaultdict(collections.Counter)
  counts: dict[Any, collections.Counter] = collections.defaultdict(collections.Counter)
  for e in events:
    if e.get("ph") == "X":
      durations[e["pid"]][e["name"]] += e.get("dur", 0)
      counts[e["pid"]][e["name"]] += 1
  out = []
  for pid in sorted(durations, key=lambda p: str(names.get(p, p))):
    name = str(names.get(pid, pid))
    row = {"process": name, "events_per_run": sum(counts[pid].values()) / runs,
           "top": [{"name": op, "us_per_run": us / runs, "count_per_run": counts[pid][op] / runs}
                   for op, us in durations[pid].most_common(top)]}
    if name.startswith("/device:"):
      row["device_us_per_run"] = sum(durations[pid].values()) / runs
    out.append(row)
  return out


def measure(specs: Sequence[str], *, d_model: int = 96, num_layers: int = 3,
            length: int = 16, masked: int = 10, vocab_size: int = 30, block_length: int = 2,
            batch: int = 1, runs: int = 20, top: int = 12, seed: int = 0,
            trace_dir: str | None = None) -> list[dict[str, Any]]:
  """One row per sampler spec (see the module docstring).

  Args:
    specs: sampler specs as `experiments.compare` takes them ("method:opt=val,...").
    d_model, num_layers, length, vocab_size, block_length: the block-causal model (random
      init; heads of 32 dimensions, MLP of 3 d_model).
    masked: the masked positions at the end of every prompt (the rest are random tokens).
    batch: rows per call.
    runs: traced calls per spec (after warm-up).
    top: ops kept per process.
    seed: model and prompt seed.
    trace_dir: where the traces go (one folder per spec); a temporary folder if None.

  Raises:
    ValueError: `masked` not in [1, length], `runs < 1`, a bad spec or model size.
  """
  if not 1 <= masked <= length:
    raise ValueError(f"masked must be in [1, length={length}], got {masked}")
  if runs < 1:
    raise ValueError(f"runs must be >= 1, got {runs}")
  config = models.TransformerConfig(
      vocab_size=vocab_size, mask_id=vocab_size, max_length=length, d_model=d_model,
      num_layers=num_layers, num_heads=max(1, d_model // 32), mlp_dim=3 * d_model,
      attention="block_causal", block_length=block_length)
  denoiser = models.Denoiser(models.Transformer(config),
                             models.init_params(config, jax.random.key(seed)))
  tokens = np.random.default_rng(seed).integers(0, vocab_size, (batch, length)).astype(np.int32)
  tokens[:, length - masked:] = config.mask_id
  key = jax.random.key(seed + 1)
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    for index, spec in enumerate(specs):
      method, options = parse_sampler(spec)

      def call(method=method, options=options):
        return fj.sample(denoiser, tokens, key, method, mask_id=config.mask_id, **options)

      nfe = float(np.max(call().stats.nfe))
      loops = loop_ops.sampler_loop_ops(denoiser, tokens, key, method, mask_id=config.mask_id,
                                        **options)
      seconds = timing.median_seconds(call, repeats=max(5, runs))
      folder = os.path.join(trace_dir or scratch, f"{index:02d}")
      processes = summarize(trace_events(call, runs, folder), runs, top)
      rows.append({"sampler": spec, "batch": batch, "nfe": nfe, "ms_per_call": 1e3 * seconds,
                   "loops": [{k: v for k, v in loop.items() if k != "kinds"} for loop in loops],
                   "processes": processes})
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: per sampler, its wall-clock, its loop bodies' ops and each process's top
  ops."""
  lines = []
  for row in rows:
    lines += [f"### `{row['sampler']}`, batch {row['batch']}: {row['ms_per_call']:.3f} ms "
              f"per `fj.sample` call, {row['nfe']:.0f} sequential calls", ""]
    loops = ", ".join(f"depth {loop['depth']}: {loop['ops']} ({len(loop['copies'])} copies)"
                      for loop in row["loops"])
    lines += [f"Ops per iteration of each `while` body (compiled, `loop_ops`; copies: buffers "
              f"XLA copies per iteration): {loops}", ""]
    lines += format_processes(row["processes"], "call")
  return "\n".join(lines)


def format_processes(processes: Sequence[dict[str, Any]], run: str) -> list[str]:
  """Markdown lines: per profiler process (`summarize`'s rows), its events and its top
  ops, each per `run` (what one traced run was: "call", "step")."""
  lines = []
  for process in processes:
    device = (f", device ops {process['device_us_per_run']:.1f} us per {run}"
              if "device_us_per_run" in process else "")
    lines += [f"{process['process']}: {process['events_per_run']:.1f} events per {run}"
              f"{device}", "", f"| op | us per {run} | count per {run} |", "|---|---|---|"]
    lines += [f"| `{op['name'][:80]}` | {op['us_per_run']:.1f} | {op['count_per_run']:.1f} |"
              for op in process["top"]]
    lines.append("")
  return lines


def write(rows: Sequence[dict[str, Any]], config: dict[str, Any], workdir: str
          ) -> dict[str, str]:
  """`op_profile.json` and `op_profile.md` in `workdir`; returns their paths by suffix."""
  return timing.write_results(workdir, "op_profile", rows, config, format_table(rows))
