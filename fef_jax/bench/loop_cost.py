"""Where a sampler's time goes: a step or round against a bare denoiser call.

For one random-init bidirectional transformer and batch size `B` this measures
(median of `repeats` warm runs, `block_until_ready`):

- `bare_ms`: one jitted denoiser call of the `B` states, dispatch included;
- `in_loop_ms(N)`: one call of `N` rows inside a `lax.fori_loop` (what a call
  costs inside the sampler's own loop, without dispatch);
- per sampler, `per_call_ms`: the slope of `fef_jax.sample`'s wall-clock against
  its sequential calls, from two prompts of different lengths (same `L`, so
  every call has the same shape): the cost of one more step or round,
  without the per-call fixed costs; and `fixed_ms`: what one `fj.sample` call
  costs beyond its steps (validation, the first call, transfers);
- `per_call_over_bare`: `per_call_ms / in_loop_ms(rows evaluated per call)`,
  the loop's overhead over the model work of a step (`B` rows) or a FeF
  round (`B * W` copies). 1.0 means the loop adds nothing.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax import models
from fef_jax.bench import timing
from fef_jax.eval.exactness import parse_sampler


def in_loop_call_seconds(logits_fn, tokens_NxL: jax.Array, repeats: int,
                         calls: int = 10) -> float:
  """Seconds per denoiser call of `tokens_NxL` inside a `lax.fori_loop` of `calls`."""
  def loop(tokens):
    def body(_, acc):
      # The dependence on `acc` keeps XLA from hoisting the call out of the loop.
      return acc + logits_fn(tokens + (acc > 1e30).astype(tokens.dtype))[0, 0, 0]
    return jax.lax.fori_loop(0, calls, body, jnp.zeros((), jnp.float32))
  run = jax.jit(loop)
  return timing.median_seconds(run, tokens_NxL, repeats=repeats) / calls


def _prompts(batch: int, length: int, num_masked: int, vocab_size: int, mask_id: int,
             seed: int) -> np.ndarray:
  tokens = np.random.default_rng(seed).integers(0, vocab_size, (batch, length))
  tokens[:, length - num_masked:] = mask_id
  return tokens.astype(np.int32)


def measure(specs: Sequence[str], *, d_model: int, num_layers: int, length: int,
            vocab_size: int, batch: int, repeats: int, seed: int = 0) -> list[dict[str, Any]]:
  """One row per sampler spec for this model size and batch (see the module docstring).

  Raises:
    ValueError: `length < 4` (two prompt lengths are needed), a bad model size or spec.
  """
  if length < 4:
    raise ValueError(f"length must be >= 4, got {length}")
  config = models.TransformerConfig(
      vocab_size=vocab_size, mask_id=vocab_size, max_length=length, d_model=d_model,
      num_layers=num_layers, num_heads=max(1, d_model // 32), mlp_dim=3 * d_model)
  denoiser = models.Denoiser(models.Transformer(config),
                             models.init_params(config, jax.random.key(seed)))
  few, many = length // 4, length - length // 4
  short = _prompts(batch, length, few, vocab_size, config.mask_id, seed)
  long = _prompts(batch, length, many, vocab_size, config.mask_id, seed)
  call = jax.jit(lambda t: denoiser(t))  # pylint: disable=unnecessary-lambda
  bare_s = timing.median_seconds(call, jnp.asarray(short), repeats=repeats)
  in_loop = {}
  rows = []
  for spec in specs:
    method, options = parse_sampler(spec)
    key = jax.random.key(seed + 1)

    def run(tokens):
      return fj.sample(denoiser, tokens, key, method, mask_id=config.mask_id, **options)

    # The loop runs until its slowest row is done: calls per batch = the largest nfe.
    nfe_few = int(np.max(run(short).stats.nfe))
    nfe_many = int(np.max(run(long).stats.nfe))
    seconds_few = timing.median_seconds(lambda: run(short).tokens, repeats=repeats)
    seconds_many = timing.median_seconds(lambda: run(long).tokens, repeats=repeats)
    per_call_s = (seconds_many - seconds_few) / max(nfe_many - nfe_few, 1)
    rows_per_call = batch * int(options.get("window", 16)) if method == "fef" else batch
    if rows_per_call not in in_loop:
      in_loop[rows_per_call] = in_loop_call_seconds(
          denoiser, jnp.asarray(np.repeat(short, rows_per_call // batch, axis=0)), repeats)
    rows.append({
        "sampler": spec, "d_model": d_model, "num_layers": num_layers, "length": length,
        "vocab_size": vocab_size, "batch": batch, "bare_ms": 1e3 * bare_s,
        "rows_per_call": rows_per_call, "in_loop_ms": 1e3 * in_loop[rows_per_call],
        "calls": [nfe_few, nfe_many], "per_call_ms": 1e3 * per_call_s,
        "fixed_ms": 1e3 * (seconds_few - per_call_s * nfe_few),
        "per_call_over_bare": per_call_s / in_loop[rows_per_call]})
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of `measure` rows."""
  lines = ["| model (d × layers, L, V) | B | sampler | bare call, dispatched (ms) | rows per call "
           "| call of those rows in a loop (ms) | sampler per call (ms) | ratio | fixed per "
           "`fj.sample` (ms) |", "|" + "---|" * 9]
  for r in rows:
    lines.append(
        f"| {r['d_model']} × {r['num_layers']}, {r['length']}, {r['vocab_size']} | {r['batch']} "
        f"| `{r['sampler']}` | {r['bare_ms']:.3f} | {r['rows_per_call']} "
        f"| {r['in_loop_ms']:.3f} | {r['per_call_ms']:.3f} | {r['per_call_over_bare']:.2f} "
        f"| {r['fixed_ms']:.2f} |")
  return "\n".join(lines)


def write(rows: Sequence[dict[str, Any]], config: dict[str, Any],
          workdir: str) -> dict[str, str]:
  """Writes loop_cost.json and loop_cost.md into `workdir`; returns the paths."""
  return timing.write_results(workdir, "loop_cost", rows, config, format_table(rows))
