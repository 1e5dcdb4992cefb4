"""Cost of one FeF verification round: whole-sequence copies vs block-local copies with a cache.

A round evaluates `W` prefix-revealed copies of each of `B` states in one call.
Uncached that is `B W` whole sequences of length `L`. With a block-causal model
and `cache="exact"` (`fef_jax.samplers.cache`) it is `B W` copies of one block of
`S` positions against cached keys and values, `W S / L` of the work, plus the
sampler's refresh once per block: one block-local call (`extend`) of two copies
of the `2S` positions from the old block to the new one (the current state's,
whose keys and values of the old block go into the cache, and the drafts'
input's, for the new block's drafts). With marginal drafts and tiny blocks the
sampler fuses that refresh into its rounds (`fef_jax.samplers.cache.fused_rounds`):
each round evaluates the block before the window once, the `W` copies of the
window, and the block after it once, as one copy sees it (`S + W S + S` positions),
with `extend_shared`, and no refresh call runs; the exact round is then that call
(`fused`, timed wherever `L >= 3S`; the sampler fuses only for blocks of 1 or 2
positions).
With a bidirectional model and `cache="approximate"` (the dual cache, refreshed
once per block) the block call does the same work (only its attention mask
differs) and the refresh encodes the `B` states only.

Every time is the median of `repeats` warm calls of a jit-compiled function
(`block_until_ready`), reported in units of one call of the `B` whole
sequences: the cost of decoding one token per call. With `tau` tokens per round
(at most `W`) a block takes about `S / tau` rounds, so a cached round costs
`block + refresh tau / S` on average (exact without fusing: `refresh` of `2B`
spans of `2S` positions; approximate: of `B` whole rows), and the speed-up over one
token per call is
`tau / (round cost)`.

(b') With `cache="prefix"` (`fef_jax.samplers.shared_prefix`) a round runs the
`B` drafted states whole (`encode`) and one block of `S` positions per copy against
their keys and values (`copy_block_logits`): `L + W S` positions per row, with no
refresh, and sets that span any number of blocks (`prefix`).

(c) The single-pass speculative head (`verifier="head"`,
`fef_jax.models.spec_head`, `head_layers` causal blocks on the same backbone):
a round is one head pass over the block's `S` items (`head`), and the backbone
runs once per step on the `B` states (`backbone`, logits and hidden states), so
with one step per block a head round costs `head + backbone tau / S`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from fef_jax import models
from fef_jax.bench import timing
from fef_jax.models import spec_head
from fef_jax.samplers import cache as sampler_cache


def model_config(d_model: int, length: int, span: int, num_layers: int,
                 vocab_size: int, dtype: str = "float32") -> models.TransformerConfig:
  """A block-causal transformer of width `d_model` (heads of 64, MLP `3 d_model`)
  computing in `dtype` (e.g. `"bfloat16"`; parameters stay float32)."""
  return models.TransformerConfig(
      vocab_size=vocab_size, mask_id=vocab_size, max_length=length, d_model=d_model,
      num_layers=num_layers, num_heads=max(1, d_model // 64), mlp_dim=3 * d_model,
      attention="block_causal", block_length=span, dtype=jnp.dtype(dtype))


def head_config(config: models.TransformerConfig, head_layers: int) -> models.SpecHeadConfig:
  """`config` with a speculative head of `head_layers` blocks."""
  fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  return models.SpecHeadConfig(**fields, head_layers=head_layers)


def measure(d_model: int, length: int, span: int, windows: Sequence[int], *, batch: int,
            num_layers: int, vocab_size: int, tokens_per_round: float, repeats: int,
            head_layers: int = 1, dtype: str = "float32",
            seed: int = 0) -> list[dict[str, Any]]:
  """Times the round of every window `W` for one model size and length; one row per `W`.

  Raises:
    ValueError: `length` not a multiple of `span` (or a bad model size).
  """
  if length % span:
    raise ValueError(f"length={length} must be a multiple of span={span}")
  config = model_config(d_model, length, span, num_layers, vocab_size, dtype)
  model = models.Transformer(config)
  params_key, tokens_key, mask_key, window_key = jax.random.split(jax.random.key(seed), 4)
  params = models.init_params(config, params_key)
  call = jax.jit(lambda p, t: model.apply({"params": p}, t))
  encode = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode"))
  block = jax.jit(lambda p, c, t, s: model.apply({"params": p}, c, t, s,
                                                 method="block_logits"))
  extend = jax.jit(lambda p, c, t, s: model.apply({"params": p}, c, t, s, method="extend"))

  @jax.jit
  def prefix_round(p, t, blocks_BxWxS, starts_BxW):
    _, drafted_cache = model.apply({"params": p}, t, method="encode")
    return model.apply({"params": p}, drafted_cache, blocks_BxWxS, starts_BxW,
                       method="copy_block_logits")

  extend_shared = jax.jit(lambda p, c, shared, t, shared_start, s, tail, tail_copy: model.apply(
      {"params": p}, c, shared, t, shared_start, s, tail, s + span, tail_copy,
      method="extend_shared"), static_argnums=7)
  tokens_BxL = jnp.where(jax.random.bernoulli(mask_key, 0.5, (batch, length)), config.mask_id,
                         jax.random.randint(tokens_key, (batch, length), 0, vocab_size))
  single_s = timing.median_seconds(call, params, tokens_BxL, repeats=repeats)
  approx_refresh_s = timing.median_seconds(encode, params, tokens_BxL, repeats=repeats)
  _, cache = encode(params, tokens_BxL)
  head_denoiser = spec_head.SpecHeadDenoiser(
      spec_head.SpecHeadTransformer(head_config(config, head_layers)),
      spec_head.init_params(head_config(config, head_layers), params_key))
  backbone = jax.jit(head_denoiser.hidden)
  head = jax.jit(head_denoiser.head_logits)
  backbone_s = timing.median_seconds(backbone, tokens_BxL, repeats=repeats)
  _, hidden_BxLxD = backbone(tokens_BxL)
  # The head's items: the block in the middle, in order (shapes are static).
  items_BxS = jnp.broadcast_to(length // 2 // span * span + jnp.arange(span), (batch, span))
  values_BxS = jax.random.randint(window_key, (batch, span), 0, vocab_size)
  # A block in the middle; shapes are static, so the cost does not depend on it.
  start_B = jnp.full((batch,), length // 2 // span * span, jnp.int32)
  # The exact refresh into the block after the middle one (the whole-row re-encoding
  # when the sequence holds fewer than two blocks: no refresh ever runs then).
  if 2 * span <= length:
    refresh_s = timing.median_seconds(
        extend, params, cache, jax.random.randint(window_key, (batch, 2, 2 * span), 0,
                                                  vocab_size + 1),
        jnp.minimum(start_B, length - 2 * span), repeats=repeats)
  else:
    refresh_s = timing.median_seconds(encode, params, jnp.concatenate([tokens_BxL] * 2),
                                      repeats=repeats)
  rows = []
  for window in windows:
    copies_NxL = jnp.repeat(tokens_BxL, window, axis=0)
    span_BxWxS = jax.random.randint(window_key, (batch, window, span), 0, vocab_size + 1)
    whole_s = timing.median_seconds(call, params, copies_NxL, repeats=repeats)
    # The copies' blocks spread over the row (static shapes: the place costs nothing).
    starts_BxW = jnp.broadcast_to(jnp.arange(window) * span % length, (batch, window))
    prefix_s = timing.median_seconds(prefix_round, params, tokens_BxL, span_BxWxS,
                                     starts_BxW.astype(jnp.int32), repeats=repeats)
    block_s = timing.median_seconds(block, params, cache, span_BxWxS, start_B, repeats=repeats)
    # The sampler fuses the refresh into its rounds for blocks of 1 or 2 positions
    # (`fef_jax.samplers.cache.fused_rounds`); the fused call is timed wherever it fits.
    fused = 3 * span <= length
    if fused:
      window_start_B = jnp.clip(start_B, span, length - 2 * span)
      fused_s = timing.median_seconds(
          extend_shared, params, cache, span_BxWxS[:, 0], span_BxWxS,
          window_start_B - span, window_start_B, span_BxWxS[:, 0],
          window - 1, repeats=repeats)
    tau = min(float(tokens_per_round), float(window))
    whole_units, block_units = whole_s / single_s, block_s / single_s
    refresh_units, approx_refresh_units = refresh_s / single_s, approx_refresh_s / single_s
    fused_units = fused_s / single_s if fused else None  # (L < 3S: never fused)
    sampler_fuses = fused and sampler_cache.fusing_pays(window, span)
    cached_units = fused_units if sampler_fuses else block_units + refresh_units * tau / span
    approx_units = block_units + approx_refresh_units * tau / span
    queries_BxW = jnp.broadcast_to(jnp.arange(window) % span, (batch, window))
    head_s = timing.median_seconds(head, hidden_BxLxD, items_BxS, values_BxS,
                                   jnp.ones((batch, span), bool), queries_BxW, repeats=repeats)
    head_units, backbone_units = head_s / single_s, backbone_s / single_s
    head_round_units = head_units + backbone_units * tau / span
    prefix_units = prefix_s / single_s
    rows.append({
        "d_model": d_model, "length": length, "span": span, "window": window,
        "batch": batch, "num_layers": num_layers, "dtype": dtype, "tokens_per_round": tau,
        "single_ms": 1e3 * single_s, "whole_ms": 1e3 * whole_s, "block_ms": 1e3 * block_s,
        "refresh_ms": 1e3 * refresh_s, "whole_units": whole_units,
        "block_units": block_units, "ideal_block_units": window * span / length,
        "refresh_units": refresh_units, "fused_units": fused_units,
        "cached_round_units": cached_units,
        "speedup_whole": tau / whole_units, "speedup_cached": tau / cached_units,
        "approx_refresh_units": approx_refresh_units, "approx_round_units": approx_units,
        "speedup_approx": tau / approx_units,
        "prefix_ms": 1e3 * prefix_s, "prefix_units": prefix_units,
        "speedup_prefix": tau / prefix_units,
        "head_layers": head_layers, "head_ms": 1e3 * head_s, "backbone_ms": 1e3 * backbone_s,
        "head_units": head_units, "backbone_units": backbone_units,
        "head_round_units": head_round_units, "speedup_head": tau / head_round_units})
  return rows


def run_grid(d_models: Sequence[int], lengths: Sequence[int], span: int,
             windows: Sequence[int], **options: Any) -> list[dict[str, Any]]:
  """`measure` for every model width and length."""
  return [row for d_model in d_models for length in lengths
          for row in measure(d_model, length, span, windows, **options)]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table; costs in units of one whole-sequence call of the batch."""
  header = ["d_model", "L", "S", "W", "1 call (ms)", "whole W×L", "block W×S", "ideal W·S/L",
            "refresh 2×2S", "fused 2S+W×S", "exact round", "approx. round", "prefix L+W×S",
            "head pass", "head round", "tok/round", "speed-up whole", "speed-up exact",
            "speed-up approx.", "speed-up prefix", "speed-up head"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["d_model"], r["length"], r["span"], r["window"], f"{r['single_ms']:.2f}",
             f"{r['whole_units']:.2f}", f"{r['block_units']:.2f}",
             f"{r['ideal_block_units']:.2f}", f"{r['refresh_units']:.2f}",
             "-" if r["fused_units"] is None else f"{r['fused_units']:.2f}",
             f"{r['cached_round_units']:.2f}", f"{r['approx_round_units']:.2f}",
             f"{r['prefix_units']:.2f}", f"{r['head_units']:.2f}",
             f"{r['head_round_units']:.2f}", f"{r['tokens_per_round']:.1f}",
             f"{r['speedup_whole']:.2f}x", f"{r['speedup_cached']:.2f}x",
             f"{r['speedup_approx']:.2f}x", f"{r['speedup_prefix']:.2f}x",
             f"{r['speedup_head']:.2f}x"]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Round cost against the window, one panel per (d_model, L)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  groups = list(dict.fromkeys((r["d_model"], r["length"]) for r in rows))
  fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4), squeeze=False)
  for ax, (d_model, length) in zip(axes[0], groups):
    mine = [r for r in rows if (r["d_model"], r["length"]) == (d_model, length)]
    windows = [r["window"] for r in mine]
    for key, label, style in [("whole_units", "whole copies (W×L)", "o-"),
                              ("block_units", "block copies (W×S)", "s-"),
                              ("cached_round_units", "exact-cache round incl. refresh", "^-"),
                              ("approx_round_units", "approx.-cache round incl. refresh",
                               "<-"),
                              ("prefix_units", "prefix round (L + W×S)", "d-"),
                              ("head_round_units", "head round incl. backbone", "v-"),
                              ("ideal_block_units", "ideal W·S/L", "k--")]:
      ax.plot(windows, [r[key] for r in mine], style, label=label)
    ax.axhline(1.0, color="gray", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("copies per round W")
    ax.set_ylabel("round cost (whole-sequence calls)")
    ax.set_title(f"d_model={d_model}, L={length}, S={mine[0]['span']}")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(rows: Sequence[dict[str, Any]], config: dict[str, Any],
          workdir: str) -> dict[str, str]:
  """Writes round_cost.json, round_cost.md and round_cost.png into `workdir`; returns the paths."""
  paths = timing.write_results(workdir, "round_cost", rows, config, format_table(rows))
  paths["png"] = os.path.join(workdir, "round_cost.png")
  plot(rows, paths["png"])
  return paths
