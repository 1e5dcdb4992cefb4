"""The exactness experiment: every sampler against oracle distributions with known joints.

For each oracle and each sampler setting, draw `num_samples` sequences from an
all-masked start and report how far their distribution is from the truth
(total variation and a chi-square goodness-of-fit p-value) beside what it cost
(sequential calls, sequences evaluated, tokens per round, acceptance rate and,
for FeF, the speculative-sampling expectation of tokens per round).

Joint tables are compared on whole sequences; chains on pair statistics
(the largest pair TV and a Bonferroni-combined p-value over a fixed set of
short- and long-range pairs), since their joints are too large to histogram.
"""
from __future__ import annotations

import json
import math
import time
import zlib
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax import oracles
from fef_jax import stats

ORACLES = ("phrases", "random_table", "sticky_chain", "hmm")


def build_oracle(name: str, seed: int = 0):
  """The named oracle distribution (each with strong dependencies between tokens).

  phrases: V=3, L=5, three whole phrases (50/30/20%) plus 3% uniform smoothing.
  random_table: V=4, L=5, a peaky Dirichlet(0.05) joint over all 1024 sequences.
  sticky_chain: V=4, L=32, stays on its token with probability 0.85.
  hmm: 4 hidden states, V=6, L=24, peaky random transitions and emissions.
  """
  if name == "phrases":
    return oracles.JointTable.from_phrases(
        phrases=[[0, 0, 1, 1, 2], [1, 2, 2, 0, 0], [2, 1, 0, 2, 1]],
        probs=[0.5, 0.3, 0.2], vocab_size=3, smoothing=0.03)
  if name == "random_table":
    return oracles.JointTable.random(seed, vocab_size=4, length=5, concentration=0.05)
  if name == "sticky_chain":
    return oracles.MarkovChain.sticky(vocab_size=4, length=32, stay_prob=0.85)
  if name == "hmm":
    return oracles.HiddenMarkovModel.random(seed, hidden=4, vocab_size=6, length=24,
                                            concentration=0.3)
  raise ValueError(f"unknown oracle {name!r}; expected one of {ORACLES}")


def parse_sampler(spec: str) -> tuple[str, dict[str, Any]]:
  """'fef:steps=1,window=4,order=random' -> ('fef', {'steps': 1, 'window': 4, ...}).

  Values are read as int, then float, then kept as strings; 'none' is None.
  """
  method, _, option_text = spec.partition(":")
  options: dict[str, Any] = {}
  for item in filter(None, option_text.split(",")):
    name, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"sampler spec {spec!r}: option {item!r} is not name=value")
    options[name.strip()] = _parse_value(text.strip())
  return method.strip(), options


def _parse_value(text: str) -> Any:
  if text.lower() == "none":
    return None
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def pairs_for(length: int) -> list[tuple[int, int]]:
  """Short- and long-range position pairs checked for chains."""
  half, quarter = length // 2, length // 4
  return sorted({(0, 1), (half - 1, half), (length - 2, length - 1), (0, 2),
                 (quarter, 3 * quarter), (0, length - 1)})


def fef_set_sizes(length: int, steps: int | None, block_length: int | None,
                  mode: str) -> list[int]:
  """Sizes of the sets that FeF verifies on an all-masked row of `length` tokens.

  Re-derived here from the schedule's definition (each block gets
  `max(1, steps // num_blocks)` steps, a step commits `ceil(remaining /
  steps_left)`; `joint_then_remask` verifies everything still masked in the
  block), independently of the sampler code.
  """
  block_length = block_length or length
  blocks = [min(block_length, length - s) for s in range(0, length, block_length)]
  per_block = 1 if steps is None else max(1, steps // len(blocks))
  sizes = []
  for remaining in blocks:
    for steps_left in range(per_block, 0, -1):
      commit = -(-remaining // steps_left)
      sizes.append(remaining if mode == "joint_then_remask" else commit)
      remaining -= commit
  return [s for s in sizes if s > 0]


def expected_rounds(set_size: int, acceptance: float, window: int) -> float:
  """Expected verification rounds to decide a set, for i.i.d. acceptance `b`.

  A round over `m` undecided positions commits `c = min(a + 1, W, m)` tokens,
  `a` the number of leading accepted drafts (`P(a >= i) = b^i`): without the
  set's end that is the speculative-sampling result `E[c] = (1 - b^W) / (1 - b)`
  (DESIGN.md's formula with `k = W - 1`); the recursion adds the truncation.
  """
  rounds = [0.0] * (set_size + 1)
  for m in range(1, set_size + 1):
    cap = min(window, m)
    expected = 1.0
    for c in range(1, cap + 1):
      prob = acceptance**(c - 1) * ((1 - acceptance) if c < cap else 1.0)
      expected += prob * rounds[m - c]
    rounds[m] = expected
  return rounds[set_size]


def expected_tokens_per_round(sizes: Sequence[int], committed: int, acceptance: float,
                              window: int) -> float:
  """Speculative-sampling expectation of committed tokens per round over a row's sets.

  `committed` is the row's generated tokens: `sum(sizes)` for commit-set, fewer
  for joint-then-remask, which verifies tokens that it then re-masks.
  """
  if not math.isfinite(acceptance):
    return float("nan")
  return committed / sum(expected_rounds(n, acceptance, window) for n in sizes)


def distance_to_truth(oracle, tokens_NxL: np.ndarray) -> dict[str, float]:
  """TV, its exact-sampling noise floor and a goodness-of-fit p-value."""
  num = tokens_NxL.shape[0]
  if isinstance(oracle, oracles.JointTable):
    probs = np.asarray(oracle.probs, np.float64)
    empirical = stats.empirical_distribution(tokens_NxL, oracle.vocab_size)
    counts = np.round(empirical * num).reshape(-1)
    return {"tv": stats.total_variation(empirical, probs),
            "tv_floor": stats.expected_tv_noise_floor(probs, num),
            "p_value": stats.chi_square_gof(counts, probs.reshape(-1))[2],
            "statistic": "joint"}
  tvs, floors, p_values = [], [], []
  for i, j, _, _, p_value in stats.pair_gof(tokens_NxL, oracle, pairs_for(oracle.length)):
    truth = np.asarray(oracle.pair_marginal(i, j), np.float64)
    empirical = stats.pair_counts(tokens_NxL, i, j, oracle.vocab_size) / num
    tvs.append(stats.total_variation(empirical, truth))
    floors.append(stats.expected_tv_noise_floor(truth, num))
    p_values.append(p_value)
  return {"tv": max(tvs), "tv_floor": max(floors), "p_value": stats.bonferroni(p_values),
          "statistic": "max pair"}


def measure(oracle, oracle_name: str, spec: str, num_samples: int,
            key: jax.Array) -> dict[str, Any]:
  """Runs one sampler setting on one oracle; returns one table row (JSON-ready)."""
  method, options = parse_sampler(spec)
  tokens = jnp.full((num_samples, oracle.length), oracle.mask_id, jnp.int32)
  start = time.perf_counter()
  result = fj.sample(oracle.logits_fn, tokens, key, method, mask_id=oracle.mask_id, **options)
  samples = np.asarray(result.tokens)
  seconds = time.perf_counter() - start
  summary = result.stats.summary()
  row = {"oracle": oracle_name, "sampler": spec, "method": method, "options": options,
         "num_samples": num_samples, "length": oracle.length, "seconds": seconds,
         **summary, **distance_to_truth(oracle, samples)}
  row["expected_tokens_per_round"] = None
  if method == "fef":
    sizes = fef_set_sizes(oracle.length, options.get("steps"), options.get("block_length"),
                          options.get("mode", "commit_set"))
    row["expected_tokens_per_round"] = expected_tokens_per_round(
        sizes, oracle.length, summary["acceptance_rate"], options.get("window", 16))
  return row


def run_grid(oracle_names: Sequence[str], sampler_specs: Sequence[str], num_samples: int,
             seed: int, progress: bool = True) -> list[dict[str, Any]]:
  """Every sampler on every oracle, with a progress bar.

  A row's key is `row_key(seed, oracle, spec)`: a row draws the same samples whatever
  else the grid holds, so adding a row changes no other.
  """
  from tqdm.auto import tqdm  # only experiments need the progress bar
  jobs = [(o, s) for o in oracle_names for s in sampler_specs]
  rows = []
  bar = tqdm(jobs, disable=not progress, desc="exactness", unit="run")
  for oracle_name, spec in bar:
    bar.set_postfix_str(f"{oracle_name} {spec}")
    oracle = build_oracle(oracle_name, seed)
    rows.append(measure(oracle, oracle_name, spec, num_samples,
                        row_key(seed, oracle_name, spec)))
  return rows


def row_key(seed: int, oracle_name: str, spec: str) -> jax.Array:
  """The PRNG key of one row of the grid: `seed` folded with a CRC-32 of the oracle's
  name and the sampler spec (stable across runs and Python processes, unlike `hash`)."""
  return jax.random.fold_in(jax.random.key(seed),
                            zlib.crc32(f"{oracle_name}|{spec}".encode()) & 0x7FFFFFFF)


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, float):
    return f"{value:.2e}" if (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"
  return str(value)


def format_table(rows: Iterable[dict[str, Any]]) -> str:
  """A Markdown table of the rows."""
  header = ["oracle", "sampler", "TV", "TV floor", "p-value", "seq. calls", "sequences",
            "tokens/round", "accept", "expected tok/round", "seconds"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["oracle"], f"`{r['sampler']}`", _fmt(r["tv"]), _fmt(r["tv_floor"]),
             _fmt(r["p_value"]), _fmt(r["nfe"], 2), _fmt(r["sequences"], 1),
             _fmt(r["tokens_per_round"], 2), _fmt(r["acceptance_rate"], 2),
             _fmt(r["expected_tokens_per_round"], 2), _fmt(r["seconds"], 1)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
  """TV to the truth against sequential calls, one panel per oracle."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(dict.fromkeys(r["oracle"] for r in rows))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
  fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
  for ax, name in zip(axes[0], names):
    mine = [r for r in rows if r["oracle"] == name]
    for method in methods:
      pts = sorted((r["nfe"], r["tv"]) for r in mine if r["method"] == method)
      if pts:
        ax.plot(*zip(*pts), "o-", color=colors[method], label=method, alpha=0.8)
    ax.axhline(max(r["tv_floor"] for r in mine), color="gray", ls="--", lw=1,
               label="exact-sampling noise")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequential denoiser calls")
    ax.set_ylabel(f"TV to truth ({mine[0]['statistic']})")
    ax.set_title(f"{name} (L={mine[0]['length']})")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(rows: Sequence[dict[str, Any]], config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Writes results.json, results.md and tv_vs_calls.png into `workdir`; returns the paths."""
  import os
  os.makedirs(workdir, exist_ok=True)
  paths = {name: os.path.join(workdir, name)
           for name in ("results.json", "results.md", "tv_vs_calls.png")}
  with open(paths["results.json"], "w") as f:
    json.dump({"config": config, "jax_version": jax.__version__,
               "backend": jax.default_backend(), "rows": rows}, f, indent=1, default=str)
  with open(paths["results.md"], "w") as f:
    f.write(format_table(rows) + "\n")
  plot(rows, paths["tv_vs_calls.png"])
  return paths
