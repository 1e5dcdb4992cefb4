"""The paper's comparison on a trained model: accuracy and speed of every sampler.

For one denoiser and one set of task prompts, each sampler spec
(`"method:opt=val,..."`, see `fef_jax.eval.exactness.parse_sampler`) fills
the answers; we report accuracy with a Wilson interval, sequential calls,
sequences evaluated, tokens per round, acceptance rate, and wall-clock per
generated token measured after a compile-only warm-up (`block_until_ready`),
plus the speed-up over the reference sampler (one token per call,
`first_hitting`, the exact baseline). Rows go to JSON, a Markdown table and a
plot of accuracy against wall-clock with the Pareto front marked.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import tqdm

from fef_jax import generate
from fef_jax.data import synthetic
from fef_jax.eval import metrics
from fef_jax.eval.exactness import parse_sampler

REFERENCE = "first_hitting"


def default_samplers(answer_length: int, head: bool = False,
                     approximate_cache: bool = True) -> tuple[str, ...]:
  """The issue's grid for answers of `answer_length` tokens.

  first-hitting (the exact one-token-per-call reference); LLaDA low-confidence
  at 1, 2, 4 tokens per step; Fast-dLLM threshold; EB; ancestral; randomized
  sizes; FeF commit-set (one step) and joint-then-remask (2 and 4 steps), each
  with windows 4, 8, 16; with `head` (a model with a speculative head), FeF
  verified by the head (one step, windows 4, 8, 16); with `approximate_cache`
  (a bidirectional model), FeF over blocks of half the answer with the
  approximate cache, refreshed per block and also before every round, beside
  the same blocks uncached (what the approximation costs).
  """
  def steps(tokens_per_step):
    return max(1, answer_length // tokens_per_step)
  specs = [REFERENCE]
  specs += [f"confidence:steps={steps(k)}" for k in (1, 2, 4)]
  specs += ["threshold:threshold=0.9", "eb:gamma=0.1", f"ancestral:steps={steps(2)}",
            f"random_sizes:steps={steps(2)}"]
  specs += [f"fef:steps=1,window={w}" for w in (4, 8, 16)]
  specs += [f"fef:mode=joint_then_remask,steps={s},window={w}" for s in (2, 4)
            for w in (4, 8, 16)]
  if head:
    specs += [f"fef:steps=1,window={w},verifier=head" for w in (4, 8, 16)]
  if approximate_cache:
    blocks = f"fef:block_length={max(1, answer_length // 2)},window=4"
    specs += [blocks, f"{blocks},cache=approximate",
              f"{blocks},cache=approximate,refresh_every=1"]
  return tuple(specs)


def compare(logits_fn: Callable[[jax.Array], jax.Array], task: synthetic.Task,
            prompts_NxP: np.ndarray, specs: Sequence[str], key: jax.Array, *,
            batch_size: int = 256, progress: bool = False) -> list[dict[str, Any]]:
  """One row per sampler spec: accuracy, costs and wall-clock on `prompts_NxP`.

  Each spec is first run once on one batch to compile (not timed), then timed
  on all prompts with the same `key`. The reference (`first_hitting`) must be
  among `specs`; speed-ups are relative to it.

  Returns:
    Dicts with `sampler, accuracy, accuracy_low, accuracy_high, n,
    seconds_per_token, speedup` and the `SampleStats.summary()` fields.

  Raises:
    ValueError: `specs` without the reference, an unknown sampler or option,
      prompts that do not fit the task.
  """
  if REFERENCE not in specs:
    raise ValueError(f"the comparison needs the reference sampler {REFERENCE!r} among "
                     f"the specs to compute speed-ups; got {list(specs)}")
  num, _ = prompts_NxP.shape
  batch_size = min(batch_size, num)
  tokens_NxL = np.concatenate(
      [prompts_NxP, np.full((num, task.answer_length), task.mask_id)], axis=1).astype(np.int32)
  rows = []
  for spec in tqdm.tqdm(specs, desc="samplers", disable=not progress):
    method, options = parse_sampler(spec)
    common = dict(method=method, mask_id=task.mask_id, batch_size=batch_size, **options)
    generate.sample_in_batches(logits_fn, tokens_NxL[:batch_size], key, **common)
    start = time.perf_counter()
    filled, stats = generate.sample_in_batches(logits_fn, tokens_NxL, key, **common)
    seconds = time.perf_counter() - start
    valid = task.check(prompts_NxP, filled[:, prompts_NxP.shape[1]:])
    low, high = metrics.wilson_interval(int(valid.sum()), num)
    summary = stats.summary()
    rows.append({"sampler": spec, "accuracy": float(valid.mean()), "accuracy_low": low,
                 "accuracy_high": high, "n": num, "seconds": seconds,
                 "seconds_per_token": seconds / max(summary["tokens"] * num, 1), **summary})
  reference = next(r for r in rows if r["sampler"] == REFERENCE)
  for row in rows:
    row["speedup"] = reference["seconds_per_token"] / row["seconds_per_token"]
  return rows


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[str]:
  """Specs not dominated in (higher accuracy, lower seconds per token)."""
  front = []
  for r in rows:
    dominated = any(o["accuracy"] >= r["accuracy"]
                    and o["seconds_per_token"] <= r["seconds_per_token"]
                    and (o["accuracy"] > r["accuracy"]
                         or o["seconds_per_token"] < r["seconds_per_token"])
                    for o in rows)
    if not dominated:
      front.append(r["sampler"])
  return front


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """The comparison as a Markdown table (Pareto-optimal samplers in bold)."""
  front = set(pareto_front(rows))
  lines = ["| sampler | accuracy (95% CI) | seq. calls | sequences | tokens/round | "
           "accept | ms/token | speed-up |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    name = f"**`{r['sampler']}`**" if r["sampler"] in front else f"`{r['sampler']}`"
    accept = "-" if np.isnan(r["acceptance_rate"]) else f"{r['acceptance_rate']:.2f}"
    lines.append(
        f"| {name} | {r['accuracy']:.3f} ({r['accuracy_low']:.3f}-{r['accuracy_high']:.3f}) | "
        f"{r['nfe']:.2f} | {r['sequences']:.1f} | {r['tokens_per_round']:.2f} | {accept} | "
        f"{1e3 * r['seconds_per_token']:.3f} | {r['speedup']:.2f}x |")
  return "\n".join(lines)


def _short(spec: str) -> str:
  """'fef:mode=joint_then_remask,steps=2,window=8' -> 'fef jtr s2 w8' (plot labels)."""
  method, _, options = spec.partition(":")
  abbreviations = {"mode=joint_then_remask": "jtr", "steps=": "s", "window=": "w",
                   "threshold=": "t", "gamma=": "g"}
  parts = []
  for option in filter(None, options.split(",")):
    for long, short in abbreviations.items():
      option = option.replace(long, short)
    parts.append(option)
  return " ".join([method.replace("random_sizes", "rand").replace("first_hitting", "1/call")]
                  + parts)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Accuracy (with intervals) against wall-clock per token and against sequential calls.

  Wall-clock is what this machine measured; sequential calls are the latency
  on an accelerator that evaluates FeF's `W` copies in parallel. The
  wall-clock Pareto front is dashed.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
  front = sorted((r for r in rows if r["sampler"] in set(pareto_front(rows))),
                 key=lambda r: r["seconds_per_token"])
  for ax, (x_of, label) in zip(axes, [
      (lambda r: 1e3 * r["seconds_per_token"], "wall-clock per generated token (ms)"),
      (lambda r: r["nfe"], "sequential denoiser calls per answer")]):
    for r in rows:
      fef = r["sampler"].startswith("fef")
      ax.errorbar(x_of(r), r["accuracy"],
                  yerr=[[r["accuracy"] - r["accuracy_low"]],
                        [r["accuracy_high"] - r["accuracy"]]],
                  fmt="o" if fef else "s", color="C0" if fef else "C1", alpha=0.8, capsize=2)
      ax.annotate(_short(r["sampler"]), (x_of(r), r["accuracy"]), fontsize=6, rotation=30,
                  xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].plot([1e3 * r["seconds_per_token"] for r in front], [r["accuracy"] for r in front],
               "k--", lw=1, label="Pareto front (wall-clock)")
  axes[0].legend(loc="lower right")
  axes[0].set_ylabel("accuracy (valid answers)")
  fig.suptitle("FeF (blue circles) vs baselines (orange squares)")
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def write(rows: Sequence[dict[str, Any]], workdir: str, info: dict[str, Any]) -> dict[str, str]:
  """Writes `comparison.json` (rows + `info`), `comparison.md` and `comparison.png`."""
  os.makedirs(workdir, exist_ok=True)
  paths = {kind: os.path.join(workdir, f"comparison.{kind}") for kind in ("json", "md", "png")}
  # JSON has no NaN: samplers without drafts have no acceptance rate (null).
  clean = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
           for r in rows]
  with open(paths["json"], "w") as f:
    json.dump({"info": info, "rows": clean}, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(format_table(rows) + "\n")
  plot(rows, paths["png"])
  return paths
