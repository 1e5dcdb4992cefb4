"""What a trained model's sampler costs to compile: parameters as arguments or as constants.

For a random-init transformer of the given size and each sampler spec, three
`fef_jax.sample` calls on the same prompts, each timed alone (wall-clock, result
waited for):

- `first_s`: the first call with a denoiser (trace, compile or load from JAX's
  persistent cache, run);
- `new_params_s`: a second denoiser of the same model with other parameters (a
  new checkpoint, or a later training step's parameters);
- `warm_s`: that denoiser again (the run alone; median of `repeats` calls);

the programs the second denoiser's call compiled (`new_params_compiles`: entries it
added to the jit cache of `fef_jax.api`'s sampler), and the bytes the first two calls
added to the persistent compilation cache (None when it is off).
`mode="arguments"` passes the `Denoiser` itself, whose parameters become
arguments of the compiled program (`fef_jax.api.split_denoiser`);
`mode="constants"` passes a plain function that calls it, whose program embeds
the parameters as constants (what every denoiser got before 2026-12-07).
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax

import fef_jax as fj
from fef_jax import api
from fef_jax import models
from fef_jax.bench import loop_cost
from fef_jax.bench import timing
from fef_jax.eval.exactness import parse_sampler

MODES = ("arguments", "constants")


def directory_bytes(path: str | None) -> int | None:
  """Total size of the files under `path` (None for None)."""
  if path is None:
    return None
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def _seconds(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _as_mode(denoiser: models.Denoiser, mode: str):
  if mode == "arguments":
    return denoiser
  return lambda tokens_NxL: denoiser(tokens_NxL)  # pylint: disable=unnecessary-lambda


def measure(specs: Sequence[str], *, d_model: int, num_layers: int, length: int,
            masked: int, vocab_size: int, batch: int, modes: Sequence[str] = MODES,
            cache_dir: str | None = None, repeats: int = 3,
            seed: int = 0) -> list[dict[str, Any]]:
  """One row per sampler spec and mode (see the module docstring).

  Args:
    specs: sampler specs without a cache (`"fef:steps=1,window=4"`; a plain
      function offers no block-local interface).
    d_model, num_layers, vocab_size: the bidirectional transformer (heads of 64,
      SwiGLU width 8/3 d rounded to 64).
    length, masked: `L` and the masked positions at the end of each prompt.
    batch: rows per call.
    modes: a subset of `MODES`.
    cache_dir: the persistent compilation cache's directory, if it is on.
    repeats: warm calls timed (median).
    seed: parameters and prompts.

  Raises:
    ValueError: an unknown mode, `masked` outside `[1, length]`, a spec with a
      cache, or a bad model size or spec.
  """
  if not set(modes) <= set(MODES):
    raise ValueError(f"modes must be among {MODES}, got {tuple(modes)}")
  if not 1 <= masked <= length:
    raise ValueError(f"masked must be in [1, length={length}], got {masked}")
  config = models.TransformerConfig(
      vocab_size=vocab_size, mask_id=vocab_size, max_length=length, d_model=d_model,
      num_layers=num_layers, num_heads=max(1, d_model // 64),
      mlp_dim=max(64, 8 * d_model // 3 // 64 * 64))
  model = models.Transformer(config)
  tokens = loop_cost.masked_prompts(batch, length, masked, vocab_size, config.mask_id, seed)
  rows = []
  for spec in specs:
    method, options = parse_sampler(spec)
    if options.get("cache", "none") != "none":
      raise ValueError(f"{spec!r}: a plain function has no cache interface; give specs "
                       f"without cache=")
    for mode in modes:
      # Fresh parameters for every row, so no row finds another's program by its constants.
      first, second = (models.init_params(config, jax.random.key(seed + 1000 * len(rows) + i))
                       for i in (1, 2))
      key = jax.random.key(seed)

      def run(params, mode=mode, method=method, options=options):
        logits_fn = _as_mode(models.Denoiser(model, params), mode)
        return lambda: fj.sample(logits_fn, tokens, key, method, mask_id=config.mask_id,
                                 **options)

      cache_before = directory_bytes(cache_dir)
      first_s = _seconds(run(first))
      again = run(second)
      programs = api._run._cache_size()  # pylint: disable=protected-access
      new_params_s = _seconds(again)
      new_params_compiles = api._run._cache_size() - programs  # pylint: disable=protected-access
      cache_after = directory_bytes(cache_dir)
      rows.append({
          "sampler": spec, "mode": mode, "d_model": d_model, "num_layers": num_layers,
          "num_params": sum(leaf.size for leaf in jax.tree.leaves(first)),
          "length": length, "masked": masked, "vocab_size": vocab_size, "batch": batch,
          "first_s": first_s, "new_params_s": new_params_s,
          "new_params_compiles": new_params_compiles,
          "warm_s": timing.median_seconds(again, repeats=repeats),
          "cache_bytes_written": (None if cache_dir is None
                                  else cache_after - cache_before)})
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of `measure` rows."""
  lines = ["| model (params, L, B) | sampler | parameters as | first call (s) "
           "| new parameters (s) | programs compiled for them | warm (s) "
           "| cache written (MB) |", "|" + "---|" * 8]
  for r in rows:
    written = ("off" if r["cache_bytes_written"] is None
               else f"{r['cache_bytes_written'] / 2**20:.1f}")
    lines.append(
        f"| {r['d_model']} × {r['num_layers']} ({r['num_params'] / 1e6:.1f}M), "
        f"{r['length']}, {r['batch']} | `{r['sampler']}` | {r['mode']} | {r['first_s']:.2f} "
        f"| {r['new_params_s']:.2f} | {r['new_params_compiles']} | {r['warm_s']:.3f} "
        f"| {written} |")
  return "\n".join(lines)


def write(rows: Sequence[dict[str, Any]], config: dict[str, Any],
          workdir: str) -> dict[str, str]:
  """Writes sampler_compile.json and sampler_compile.md into `workdir`; returns the paths."""
  return timing.write_results(workdir, "sampler_compile", rows, config, format_table(rows))
