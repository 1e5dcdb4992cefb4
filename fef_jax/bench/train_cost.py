"""Where a training step's time goes: startup, compile, host batches, device steps, checkpoints.

`measure(config, workdir, steps=N)` runs the training config's own pieces
(`fef_jax.train.run`: data, model, optimizer, jitted step, prefetcher, orbax
checkpoints) and times, separately:

- startup phases of a real `run.train` call until its first step (data, init,
  placement, restore, compile + first step);
- the compiled step alone: `device_step_s`, steps on one resident batch, waited
  for at the end (what the devices need per step);
- the host's batch: `host_batch_s`, drawing a batch and placing it on the devices;
- the pipelined loop as `run.train` runs it: `pipelined_step_s` with batches
  prefetched on a thread (`config.prefetch_batches`) and `unprefetched_step_s`
  without. `host_overhead` = `1 - device_step_s / pipelined_step_s` is the share
  of a step the devices wait for the host;
- what the host spends per step in those loops, while earlier steps run:
  `dispatch_s` (the step call, which returns once the step is enqueued, on a resident
  batch) and, as `unprefetched_host_s` / `pipelined_host_s`, `{"batch": drawing and
  placing the batch / waiting for the prefetch queue, "call": the step call}`. A host
  share that these do not explain means the host waited for the devices in them (a
  placement or a call that blocks until earlier steps finish);
- one checkpoint save: the call (`checkpoint_call_s`, what blocks the loop) and
  until written (`checkpoint_total_s`);
- with `profile_steps`, an op profile of that many steps as trained (`profile`:
  `op_profile.summarize` per step, traced by `jax.profiler` into `<workdir>/trace`).
  On an accelerator its `device_us_per_run` is the kernels' time per step, so
  `device_busy` = that / `pipelined_step_s` is the share of a step the device computes,
  and its top ops say where the step's time goes.

With `config.steps_per_call = K > 1` each call runs `K` steps on `K` stacked batches,
as `run.train` does, and every time above is per step.

Tokens per second count every position of the training rows; FLOPs per token
are `transformer.flops_per_token` (6N plus attention), checked against XLA's
cost analysis of the compiled step (`xla_flops_per_token`); MFU is over the
devices' known bf16 peak (`fef_jax.train.mfu`; none on CPUs).
"""
from __future__ import annotations

import copy
import functools
import itertools
import os
import statistics
import time
from typing import Any

import jax
import ml_collections

from fef_jax.bench import op_profile
from fef_jax.data import pipeline
from fef_jax.models import transformer
from fef_jax.train import checkpoint
from fef_jax.train import memory
from fef_jax.train import mfu
from fef_jax.train import phases as phases_lib
from fef_jax.train import prefetch
from fef_jax.train import run
from fef_jax.train import sharding
from fef_jax.train import step_chunks


def _startup(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """The startup phases of a real two-step training run in a fresh `workdir`."""
  short = copy.deepcopy(config)
  short.optimizer.total_steps = 2
  short.optimizer.warmup_steps = 1  # the schedule does not change the timings
  short.sample.every = 0
  short.checkpoint.best_metric = None
  timed = phases_lib.Phases()
  run.train(short, workdir, progress=False, timed=timed)
  return dict(timed.seconds)


def _seconds_per_step(step_fn, state, next_batch, calls: int, steps_per_call: int,
                      repeats: int = 3):
  """Times `repeats` runs of `calls` calls of `steps_per_call` steps each, each run
  waited for at the end.

  Returns:
    (the median over runs of the seconds per step; the medians over calls of the
     host's seconds per step in `next_batch()` (`"batch"`) and in the `step_fn` call,
     which returns once the call is dispatched (`"call"`); the final state).
  """
  per_step, batch_s, call_s = [], [], []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      before_batch = time.perf_counter()
      batch = next_batch()
      before_call = time.perf_counter()
      state, metrics = step_fn(state, batch)
      batch_s.append((before_call - before_batch) / steps_per_call)
      call_s.append((time.perf_counter() - before_call) / steps_per_call)
    jax.block_until_ready((state, metrics))
    per_step.append((time.perf_counter() - start) / (calls * steps_per_call))
  host = {"batch": statistics.median(batch_s), "call": statistics.median(call_s)}
  return statistics.median(per_step), host, state


def _xla_flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def measure(config: ml_collections.ConfigDict, workdir: str, *, steps: int = 10,
            profile_steps: int = 0) -> dict[str, Any]:
  """The step-time breakdown of `config` on this machine's devices.

  Args:
    config: a training config (as `experiments.train` takes).
    workdir: a scratch directory (a startup run and a checkpoint are written there).
    steps: timed steps per measurement (the median of three such runs is reported);
      with `config.steps_per_call = K > 1`, `max(1, steps // K)` calls of `K` steps, and
      every time is per step.
    profile_steps: steps to trace op by op (0: none; rounded up to whole calls).

  Returns:
    A flat dict of the quantities in the module docstring, plus `params`, the
    step's numerics (`dtype`, `remat`, `attention`: `model_numerics`),
    `tokens_per_step`, `tokens_per_second`, `tflops`, `mfu` (None where the
    device's peak is unknown), `memory` (`fef_jax.train.memory.estimate`) and
    the XLA memory analysis of the compiled step (`xla_temp_bytes`, or None).

  Raises:
    ValueError: `steps < 1`, `profile_steps < 0`; a bad `config.steps_per_call`;
      whatever `run.setup` raises for a bad config.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if profile_steps < 0:
    raise ValueError(f"profile_steps must be >= 0, got {profile_steps}")
  k = run.steps_per_call(config)
  calls = max(1, steps // k)
  os.makedirs(workdir, exist_ok=True)
  startup = _startup(config, os.path.join(workdir, "startup"))
  source, model, optimizer, loss_cfg, state = run.setup(config,
                                                        os.path.join(workdir, "tokenizer"))
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  shardings = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  step_fn = run.make_step_fn(config, model, optimizer, loss_cfg, shardings, mesh)
  iterator = pipeline.BatchIterator(source.arrays, config.batch_size, config.seed)
  length = source.arrays["tokens"].shape[1]
  tokens_per_step = config.batch_size * length

  # A call's host batch: one, or K stacked (as `run.step_batches` makes them).
  host_batches = iterator if k == 1 else step_chunks.stacked(iterator, itertools.repeat(k))
  place = functools.partial(sharding.shard_batch, mesh=mesh, stacked=k > 1)

  resident = jax.block_until_ready(place(next(host_batches)))
  start = time.perf_counter()
  compiled = step_fn.lower(state, resident).compile()
  compile_s = time.perf_counter() - start
  state, _ = compiled(state, resident)  # warm-up
  timed = functools.partial(_seconds_per_step, compiled, calls=calls, steps_per_call=k)
  device_step_s, resident_host, state = timed(state, lambda: resident)
  start = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(place(next(host_batches)))
  host_batch_s = (time.perf_counter() - start) / (calls * k)
  unprefetched_step_s, unprefetched_host, state = timed(state,
                                                        lambda: place(next(host_batches)))
  size = config.get("prefetch_batches", 2)
  with prefetch.Prefetcher(host_batches, iterator.state, place, size) as batches:
    state, _ = compiled(state, next(batches)[0])  # fills the prefetch queue
    pipelined_step_s, pipelined_host, state = timed(state, lambda: next(batches)[0])
    profile = None
    if profile_steps:
      profile_calls = -(-profile_steps // k)

      def trained_calls():
        nonlocal state
        for _ in range(profile_calls):
          state, _ = compiled(state, next(batches)[0])
        return state

      profile = op_profile.summarize(
          op_profile.trace_events(trained_calls, 1, os.path.join(workdir, "trace")),
          profile_calls * k)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=1)
  start = time.perf_counter()
  checkpoint.save(manager, 1, state, iterator.state(), "benchmark")
  checkpoint_call_s = time.perf_counter() - start
  checkpoint.wait(manager)
  checkpoint_total_s = time.perf_counter() - start

  flops_per_token = transformer.flops_per_token(model.config, length)
  xla_flops = _xla_flops(compiled)  # of one step also when K > 1: XLA counts a loop body once
  tokens_per_second = tokens_per_step / pipelined_step_s
  utilization = mfu.utilization(flops_per_token, tokens_per_second)
  analysis = compiled.memory_analysis()
  return {
      "params": transformer.num_params(model.config),
      "batch_size": config.batch_size, "length": length, "tokens_per_step": tokens_per_step,
      "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
      **model_numerics(model.config, length),
      "startup_s": startup, "startup_total_s": sum(startup.values()),
      "compile_s": compile_s, "device_step_s": device_step_s, "host_batch_s": host_batch_s,
      "unprefetched_step_s": unprefetched_step_s, "pipelined_step_s": pipelined_step_s,
      "prefetch_batches": size, "steps_per_call": k,
      "dispatch_s": resident_host["call"],
      "unprefetched_host_s": unprefetched_host, "pipelined_host_s": pipelined_host,
      "host_overhead": max(0.0, 1.0 - device_step_s / pipelined_step_s),
      "checkpoint_call_s": checkpoint_call_s, "checkpoint_total_s": checkpoint_total_s,
      "tokens_per_second": tokens_per_second, "flops_per_token": flops_per_token,
      "xla_flops_per_token": xla_flops / tokens_per_step if xla_flops else None,
      "tflops": utilization["tflops"], "mfu": utilization.get("mfu"),
      "memory": memory.estimate(model.config, config.batch_size, length, state,
                                mesh.shape["data"] * mesh.shape["fsdp"],
                                config.loss.get("logits_chunk", 0)),
      "xla_temp_bytes": getattr(analysis, "temp_size_in_bytes", None),
      "profile": profile,
      "device_busy": _device_busy(profile, pipelined_step_s),
  }


def model_numerics(config: transformer.TransformerConfig, length: int) -> dict[str, str]:
  """What a training step of `config` over `length` positions runs with, so that rows
  measured with different options say which they are: `dtype` (compute), `remat` (the
  policy's name in `transformer.REMAT_POLICIES`) and `attention` (the full pass's kernel
  on this backend, `"xla"` or `"cudnn"`; a training pass always has a mask).

  Raises:
    ValueError: `attention_impl="cudnn"` where cuDNN cannot run.
  """
  return {"dtype": jax.numpy.dtype(config.dtype).name, "remat": config.remat_policy,
          "attention": transformer.attention_implementation(config, length, masked=True)}


def _device_busy(profile: list[dict[str, Any]] | None, step_s: float) -> float | None:
  """The first accelerator's kernel time per profiled step over `step_s` (None on CPUs
  or without a profile)."""
  devices = [p for p in profile or () if "device_us_per_run" in p]
  return devices[0]["device_us_per_run"] / 1e6 / step_s if devices else None


def format_table(result: dict[str, Any]) -> str:
  """Markdown: the startup phases, then the per-step breakdown and throughput."""
  lines = ["| startup phase | seconds |", "|---|---|"]
  lines += [f"| {name} | {seconds:.2f} |" for name, seconds in result["startup_s"].items()]
  lines += [f"| **total to the first step** | {result['startup_total_s']:.2f} |", ""]
  ms = lambda s: f"{1e3 * s:.2f}"  # pylint: disable=unnecessary-lambda-assignment
  rows = [
      ("compile (train step)", f"{result['compile_s']:.2f} s"),
      ("device step (resident batch)", f"{ms(result['device_step_s'])} ms"),
      ("host batch (draw + place)", f"{ms(result['host_batch_s'])} ms"),
      ("step, batches not prefetched", f"{ms(result['unprefetched_step_s'])} ms"),
      (f"step, {result['prefetch_batches']} batches prefetched (as trained)",
       f"{ms(result['pipelined_step_s'])} ms"),
      ("host overhead (share of a step)", f"{100 * result['host_overhead']:.1f}%"),
      ("host per step: dispatch, resident batch", f"{ms(result['dispatch_s'])} ms"),
      ("host per step, not prefetched: batch / dispatch",
       f"{ms(result['unprefetched_host_s']['batch'])} / "
       f"{ms(result['unprefetched_host_s']['call'])} ms"),
      ("host per step, prefetched: queue wait / dispatch",
       f"{ms(result['pipelined_host_s']['batch'])} / "
       f"{ms(result['pipelined_host_s']['call'])} ms"),
      ("checkpoint save: call / until written",
       f"{ms(result['checkpoint_call_s'])} / {ms(result['checkpoint_total_s'])} ms"),
      ("tokens per second", f"{result['tokens_per_second']:.0f}"),
      ("FLOPs per token: 6N + attention / XLA", f"{result['flops_per_token']:.3g} / "
       + (f"{result['xla_flops_per_token']:.3g}" if result["xla_flops_per_token"] else "n/a")),
      ("achieved TFLOP/s", f"{result['tflops']:.3f}"),
      ("MFU", "n/a (no known peak)" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"),
      ("memory estimate per device", memory.readable_bytes(result["memory"]["total"])),
  ]
  header = (f"{result['params'] / 1e6:.1f}M parameters, batch {result['batch_size']} x "
            f"{result['length']} tokens, {result['steps_per_call']} step(s) per call, "
            f"{result['dtype']} compute, remat {result['remat']}, {result['attention']} "
            f"attention, {result['devices']} x {result['device_kind']}")
  if result["device_busy"] is not None:
    rows.append(("device busy (kernels per step / step as trained)",
                 f"{100 * result['device_busy']:.1f}%"))
  lines += [header, "", "| quantity | value |", "|---|---|"]
  lines += [f"| {name} | {value} |" for name, value in rows]
  if result["profile"]:
    lines += ["", "Op profile of steps as trained (`jax.profiler`; host events nest, device "
              "kernels add up):", ""] + op_profile.format_processes(result["profile"], "step")
  return "\n".join(lines)
