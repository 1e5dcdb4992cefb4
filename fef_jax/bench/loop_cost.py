"""Where a sampler's time goes: a step or round against a bare denoiser call.

For one random-init transformer (bidirectional, or block-causal with
`block_length`) and batch size `B` this measures (median of `repeats` warm runs,
`block_until_ready`):

- `bare_ms`: one jitted denoiser call of the `B` states, dispatch included;
- `in_loop_ms(N)`: one call of `N` rows inside a `lax.fori_loop` (what a call
  costs inside the sampler's own loop, without dispatch); for a sampler over a
  cache, one `block_logits` call of the `N` copies' windows against it (what a
  cached round evaluates);
- per sampler, `per_call_ms`: the slope of `fef_jax.sample`'s wall-clock against
  its sequential calls, from two prompts of different lengths (same `L`, so
  every call has the same shape): the cost of one more step or round,
  without the per-call fixed costs; and `fixed_ms`: what one `fj.sample` call
  costs beyond its steps (validation, the first call, transfers);
- `ms_per_token`: the whole `fj.sample` call on the longer prompts divided by the
  tokens it generates (all rows): what a user waits per token, fixed costs
  included;
- `per_call_over_bare`: `per_call_ms / in_loop_ms(rows evaluated per call)`,
  the loop's overhead over the model work of a step (`B` rows) or a FeF
  round (`B * W` copies; with `cache="prefix"` the `B` drafted states, so the
  ratio includes its `W` blocks). 1.0 means the loop adds nothing; below 1 the sampler
  does less than the bare call, e.g. projects the logits of the rows it reads
  only (`fef_jax.speculative.output_projection`), where the bare call projects
  every row.
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


def in_loop_call_seconds(logits_fn, tokens: jax.Array, repeats: int,
                         calls: int = 10) -> float:
  """Seconds per call `logits_fn(tokens)` inside a `lax.fori_loop` of `calls`."""
  def loop(tokens):
    def body(_, acc):
      # The dependence on `acc` keeps XLA from hoisting the call out of the loop, and
      # the sum from computing only the logits it would read.
      return acc + jnp.sum(logits_fn(tokens + (acc > 1e30).astype(tokens.dtype)))
    return jax.lax.fori_loop(0, calls, body, jnp.zeros((), jnp.float32))
  run = jax.jit(loop)
  return timing.median_seconds(run, tokens, repeats=repeats) / calls


def in_loop_block_seconds(denoiser, tokens_BxL: jax.Array, copies: int, span: int,
                          repeats: int) -> float:
  """`in_loop_call_seconds` of one `block_logits` call of `copies` windows of `span`
  positions per row, in the middle of the sequence, against the rows' cache."""
  batch, length = tokens_BxL.shape
  _, cache = jax.jit(denoiser.encode)(tokens_BxL)
  start = length // 2 // span * span
  start_B = jnp.full((batch,), start, jnp.int32)
  window_BxCxS = jnp.repeat(tokens_BxL[:, None, start:start + span], copies, axis=1)
  return in_loop_call_seconds(lambda w: denoiser.block_logits(cache, w, start_B),
                              window_BxCxS, repeats)


def masked_prompts(batch: int, length: int, num_masked: int, vocab_size: int, mask_id: int,
                   seed: int) -> np.ndarray:
  """int32[batch, length]: random tokens of `[0, vocab_size)` whose last `num_masked`
  positions are `mask_id`."""
  tokens = np.random.default_rng(seed).integers(0, vocab_size, (batch, length))
  tokens[:, length - num_masked:] = mask_id
  return tokens.astype(np.int32)


def measure(specs: Sequence[str], *, d_model: int, num_layers: int, length: int,
            vocab_size: int, batch: int, repeats: int, seed: int = 0,
            block_length: int | None = None) -> list[dict[str, Any]]:
  """One row per sampler spec for this model size and batch (see the module docstring).

  Args:
    block_length: a block-causal model with attention blocks of this many
      positions (what `cache="exact"` needs); None: bidirectional.

  Raises:
    ValueError: `length < 4` (two prompt lengths are needed), a bad model size or
      spec, or prompts that a spec's cache cannot serve.
  """
  if length < 4:
    raise ValueError(f"length must be >= 4, got {length}")
  config = models.TransformerConfig(
      vocab_size=vocab_size, mask_id=vocab_size, max_length=length, d_model=d_model,
      num_layers=num_layers, num_heads=max(1, d_model // 32), mlp_dim=3 * d_model,
      attention="bidirectional" if block_length is None else "block_causal",
      block_length=block_length)
  denoiser = models.Denoiser(models.Transformer(config),
                             models.init_params(config, jax.random.key(seed)))
  few, many = length // 4, length - length // 4
  short = masked_prompts(batch, length, few, vocab_size, config.mask_id, seed)
  long = masked_prompts(batch, length, many, vocab_size, config.mask_id, seed)
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
    cache_mode = options.get("cache", "none")
    # A round with cache="prefix" runs the B drafted states whole, then one block per
    # copy against them: it is set against a call of the B states.
    copies = (int(options.get("window", 16)) if method == "fef" and cache_mode != "prefix"
              else 1)
    rows_per_call = batch * copies
    # A cached round evaluates the copies' windows: the model's attention block
    # (exact) or the sampler's generation block (approximate).
    span = (None if cache_mode in ("none", "prefix") else
            block_length if cache_mode == "exact" else int(options["block_length"]))
    if (rows_per_call, span) not in in_loop:
      in_loop[rows_per_call, span] = (
          in_loop_call_seconds(denoiser, jnp.asarray(np.repeat(short, copies, axis=0)), repeats)
          if span is None else
          in_loop_block_seconds(denoiser, jnp.asarray(short), copies, span, repeats))
    rows.append({
        "sampler": spec, "d_model": d_model, "num_layers": num_layers, "length": length,
        "vocab_size": vocab_size, "block_length": block_length, "batch": batch,
        "bare_ms": 1e3 * bare_s, "rows_per_call": rows_per_call,
        "positions_per_row": length if span is None else span,
        "in_loop_ms": 1e3 * in_loop[rows_per_call, span],
        "calls": [nfe_few, nfe_many], "per_call_ms": 1e3 * per_call_s,
        "fixed_ms": 1e3 * (seconds_few - per_call_s * nfe_few),
        "ms_per_token": 1e3 * seconds_many / (batch * many),
        "per_call_over_bare": per_call_s / in_loop[rows_per_call, span]})
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of `measure` rows."""
  lines = ["| model (d × layers, L, V) | B | sampler | bare call, dispatched (ms) | rows per call "
           "| call of those rows in a loop (ms) | sampler per call (ms) | ratio | fixed per "
           "`fj.sample` (ms) | ms per token |", "|" + "---|" * 10]
  for r in rows:
    blocks = f", blocks of {r['block_length']}" if r.get("block_length") else ""
    positions = r.get("positions_per_row", r["length"])
    per_row = "" if positions == r["length"] else f" × {positions} positions"
    lines.append(
        f"| {r['d_model']} × {r['num_layers']}, {r['length']}, {r['vocab_size']}{blocks} "
        f"| {r['batch']} | `{r['sampler']}` | {r['bare_ms']:.3f} | {r['rows_per_call']}{per_row} "
        f"| {r['in_loop_ms']:.3f} | {r['per_call_ms']:.3f} | {r['per_call_over_bare']:.2f} "
        f"| {r['fixed_ms']:.2f} | {r['ms_per_token']:.3f} |")
  return "\n".join(lines)


def write(rows: Sequence[dict[str, Any]], config: dict[str, Any],
          workdir: str) -> dict[str, str]:
  """Writes loop_cost.json and loop_cost.md into `workdir`; returns the paths."""
  return timing.write_results(workdir, "loop_cost", rows, config, format_table(rows))
