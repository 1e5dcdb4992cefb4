"""Sampling a trained model on a constraint task: how often each sampler's answers are valid."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax.data import synthetic
from fef_jax.eval.exactness import parse_sampler


def answer_validity(logits_fn: Callable[[jax.Array], jax.Array], task: synthetic.Task,
                    prompts_NxP: np.ndarray, sampler_specs: Sequence[str],
                    key: jax.Array) -> list[dict[str, Any]]:
  """For each sampler spec ('method:opt=val,...'), the fraction of valid answers and its cost.

  Every prompt is followed by `task.answer_length` masks; the same key is used
  for every sampler.
  """
  num, prompt_len = prompts_NxP.shape
  tokens = np.concatenate(
      [prompts_NxP, np.full((num, task.answer_length), task.mask_id)], axis=1)
  rows = []
  for spec in sampler_specs:
    method, options = parse_sampler(spec)
    start = time.perf_counter()
    result = fj.sample(logits_fn, jnp.asarray(tokens, jnp.int32), key, method,
                       mask_id=task.mask_id, **options)
    answers = np.asarray(result.tokens)[:, prompt_len:]
    valid = task.check(prompts_NxP, answers)
    rows.append({"sampler": spec, "valid_fraction": float(valid.mean()),
                 "valid_stderr": float(np.sqrt(valid.mean() * (1 - valid.mean()) / num)),
                 "seconds": time.perf_counter() - start, **result.stats.summary()})
  return rows


def format_validity(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of `answer_validity` rows."""
  lines = ["| sampler | valid answers | seq. calls | sequences | tokens/round | accept |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    accept = "-" if np.isnan(r["acceptance_rate"]) else f"{r['acceptance_rate']:.2f}"
    lines.append(f"| `{r['sampler']}` | {r['valid_fraction']:.3f} ± {r['valid_stderr']:.3f} | "
                 f"{r['nfe']:.2f} | {r['sequences']:.1f} | {r['tokens_per_round']:.2f} | {accept} |")
  return "\n".join(lines)
