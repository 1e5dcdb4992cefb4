"""`python -m experiments.text_quality`: train what is missing, then judge every sampler.

The judge and every diffusion model of `config.text_quality.models` are trained
(or resumed, or only restored) in `workdir/<name>` (`fef_jax.eval.text_models`);
each model's tokenizer must be the judge's. Then for every model and mode the
sampler grid (`fef_jax.eval.text_quality.default_samplers`, or
`config.text_quality.samplers`) fills `num_samples` rows built from the first
held-out rows, and the judge scores them beside the held-out text itself.

`config.text_quality` fields: `models`, `block_length` (the block-causal model's
attention blocks and its samplers' blocks), `judge_steps`, `num_samples`,
`batch_size` (rows per sampler call), `modes`, `prefix_length`, `budgets`
(sequential-call budgets of the parallel baselines), `fef_options` (per model
variant, FeF's rows, e.g. `"order=random,window=8"`), `samplers` (explicit specs for
every model instead of the grid; must hold the references their rows need,
`text_quality.reference_for`).
"""
from __future__ import annotations

import functools
import platform
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from fef_jax.eval import text_models
from fef_jax.eval import text_quality
from fef_jax.models import spec_head


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field of `config.text_quality` that cannot work."""
  tq = config.text_quality
  unknown = sorted(set(tq.models) - set(text_models.VARIANTS))
  if not tq.models or unknown:
    raise ValueError(f"text_quality.models={tuple(tq.models)}: expected a non-empty subset "
                     f"of {text_models.VARIANTS}")
  missing = [name for name in tq.models if not tq.fef_options.get(name)]
  if missing:
    raise ValueError(f"text_quality.fef_options has no FeF rows for {missing}")
  if not tq.modes or set(tq.modes) - set(text_quality.MODES):
    raise ValueError(f"text_quality.modes={tuple(tq.modes)}: expected a non-empty subset "
                     f"of {text_quality.MODES}")
  if tq.num_samples < 2 or tq.batch_size < 1:
    raise ValueError(f"text_quality.num_samples={tq.num_samples} must be >= 2 (intervals "
                     f"and tests need two samples) and batch_size={tq.batch_size} >= 1")
  if ("block_causal" in tq.models and "prefix" in tq.modes
      and tq.prefix_length % tq.block_length):
    raise ValueError(f"text_quality.prefix_length={tq.prefix_length} must be a multiple of "
                     f"block_length={tq.block_length}: the exact cache needs each generated "
                     f"block inside one attention block")


def held_out_rows(source: Any, num: int) -> np.ndarray:
  """The first `num` held-out rows, int32[num, L].

  Raises:
    ValueError: fewer held-out rows than `num`.
  """
  tokens = source.eval_arrays["tokens"]
  if tokens.shape[0] < num:
    raise ValueError(f"num_samples={num} exceeds the {tokens.shape[0]} held-out rows; "
                     f"lower it or raise data.eval_fraction")
  return np.asarray(tokens[:num], np.int32)


def specs_for(config: ml_collections.ConfigDict, variant: str,
              gen_length: int) -> tuple[tuple[str, ...], Callable[[str], str]]:
  """(the sampler specs of one model and generation length, each spec's reference)."""
  tq = config.text_quality
  specs = tuple(tq.samplers) or text_quality.default_samplers(
      variant, gen_length, tq.budgets, tq.fef_options[variant], tq.block_length)
  return specs, functools.partial(text_quality.reference_for, variant,
                                  block_length=tq.block_length)


def run(config: ml_collections.ConfigDict, workdir: str, *,
        progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Trains what is missing, then returns (every row, run information).

  Raises:
    ValueError: as `check_config`; `judge.TokenizerMismatchError` when a model's
      tokenizer is not the judge's; the training loop's errors (missing data file,
      a checkpoint of another configuration, ...).
  """
  check_config(config)
  tq = config.text_quality
  start = time.perf_counter()
  names = (text_models.JUDGE, *tq.models)
  trained = text_models.train_all(config, workdir, names, progress=progress)
  train_seconds = time.perf_counter() - start
  source = trained[tq.models[0]]["source"]
  judges = {name: text_models.as_judge(trained[text_models.JUDGE],
                                       trained[name]["source"].tokenizer.fingerprint())
            for name in tq.models}
  judge = judges[tq.models[0]]
  # One denoiser per model for both modes: the samplers compile once per model.
  denoisers = {name: spec_head.make_denoiser(trained[name]["model"],
                                             trained[name]["state"].ema_params)
               for name in tq.models}
  held_out_NxL = held_out_rows(source, tq.num_samples)
  rows = []
  for index, mode in enumerate(tq.modes):
    _, first_generated = text_quality.masked_rows(held_out_NxL, mode, tq.prefix_length,
                                                  source.mask_id)
    rows.append(text_quality.data_row(judge, held_out_NxL, mode, first_generated,
                                      batch_size=tq.batch_size,
                                      decode=source.tokenizer.decode)[0])
    key = jax.random.fold_in(jax.random.key(config.seed + 7), index)
    for name in tq.models:
      specs, reference_of = specs_for(config, name, held_out_NxL.shape[1] - first_generated)
      rows += text_quality.evaluate(
          denoisers[name], judges[name], held_out_NxL, specs, reference_of, key, model=name,
          mode=mode, prefix_length=tq.prefix_length, mask_id=source.mask_id,
          batch_size=tq.batch_size, decode=source.tokenizer.decode, progress=progress)
  info = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "jax": jax.__version__, "python": platform.python_version(),
          "data": config.data.to_dict(), "tokenizer": judge.tokenizer_fingerprint,
          "train_steps": {n: int(trained[n]["state"].step) for n in names},
          "final_metrics": {n: trained[n]["metrics"] for n in names},
          "train_seconds": train_seconds,
          "evaluate_seconds": time.perf_counter() - start - train_seconds,
          "text_quality": tq.to_dict()}
  return rows, info
