"""Samples drawn during training with FeF and a baseline, so progress is visible as it happens.

For synthetic tasks: the fraction of valid answers and the sequential calls of
each sampler on fixed held-out prompts (metrics `sample/<spec>/valid` and
`sample/<spec>/calls`). For text data: completions of fixed held-out prefixes
(text corpora) or prompts (GSM8K/MBPP), decoded, per sampler.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from fef_jax import generate
from fef_jax.eval import exactness
from fef_jax.eval import task_sampling
from fef_jax.models import spec_head
from fef_jax.models import transformer
from fef_jax.train import data_source


def held_out_prompts(source: data_source.DataSource, sample_config: ml_collections.ConfigDict,
                     seed: int) -> Any:
  """The fixed prompts of every periodic sample: int[N, P] for tasks, id lists for text.

  Text corpora give the first `prefix_length` tokens of held-out rows; GSM8K /
  MBPP give the (never masked) prompt part of held-out rows.
  """
  num = sample_config.num_periodic
  if source.task is not None:
    prompts, _ = source.task.sample(np.random.default_rng(seed + 3), num)
    return prompts
  rows = {k: v[:num] for k, v in source.eval_arrays.items()}
  prompt_NxL = rows["valid"] & ~rows["maskable"]
  if not prompt_NxL.any():  # a text corpus: everything is maskable
    return [r[:sample_config.prefix_length].tolist() for r in rows["tokens"]]
  return [t[p].tolist() for t, p in zip(rows["tokens"], prompt_NxL)]


def draw(model: transformer.Transformer, params: Any, source: data_source.DataSource,
         prompts: Any, sample_config: ml_collections.ConfigDict, key: jax.Array
         ) -> tuple[dict[str, float], dict[str, list[str]]]:
  """Samples `prompts` with every `sample_config.periodic_samplers` spec.

  Returns:
    (scalar metrics, {spec: decoded completions}); tasks give no texts.
  """
  if source.task is not None:
    rows = task_sampling.answer_validity(spec_head.make_denoiser(model, params), source.task,
                                         prompts, sample_config.periodic_samplers, key)
    metrics = {}
    for row in rows:
      metrics[f"sample/{row['sampler']}/valid"] = row["valid_fraction"]
      metrics[f"sample/{row['sampler']}/calls"] = row["nfe"]
    return metrics, {}
  tokenizer = source.tokenizer
  logits_fn = spec_head.make_denoiser(
      model, params, valid_fn=generate.left_padding_valid_fn(tokenizer.pad_id))
  # Completions fill the rest of the model's length, up to `gen_length`.
  gen_length = min(sample_config.gen_length,
                   model.config.max_length - max(len(p) for p in prompts))
  if gen_length < 1:
    raise ValueError(f"held-out prompts of up to {max(len(p) for p in prompts)} tokens leave "
                     f"no room to generate within max_length={model.config.max_length}")
  metrics, texts = {}, {}
  for spec in sample_config.periodic_samplers:
    method, options = exactness.parse_sampler(spec)
    out = generate.generate(logits_fn, prompts, key, gen_length=gen_length,
                            mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                            stop_ids=(tokenizer.eos_id,), method=method,
                            batch_size=len(prompts), **options)
    metrics[f"sample/{spec}/calls"] = out.stats.summary()["nfe"]
    texts[spec] = [tokenizer.decode(p) + " >>> " + tokenizer.decode(g)
                   for p, g in zip(prompts, out.token_ids)]
  return metrics, texts
