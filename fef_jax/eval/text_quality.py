"""Sample quality on real text, judged by an independent causal model, at matched call budgets.

For one diffusion model, one prompt mode and a list of sampler specs
(`"method:opt=val,..."`, `fef_jax.eval.exactness.parse_sampler`), each sampler
fills the same masked rows with the same key, and each row of the result holds:
the judge's NLL per generated token (mean over samples, with a normal 95%
interval) and the generative perplexity `exp` of it (with the interval's
`exp`); unigram entropy and distinct-2/3 of the generated tokens (repetition,
`fef_jax.eval.diversity`); sequential calls, sequences evaluated, tokens per
round and acceptance (`SampleStats.summary`); wall-clock per generated token
(batches after the first, which compiles; `includes_compile` when there is
only one); and a Mann-Whitney U test (`fef_jax.eval.two_sample`) of its
per-sample judge NLL against an exact one-token reference's (`reference`),
with the difference of the means and its Welch 95% interval, and its sequential calls
over the reference's. Each row's reference is the exact one-token decoder of its own
factorization order (`reference_for`): with a model that is not an exact denoiser,
different orders sample different distributions.

Modes: `unconditional` samples whole rows (every position masked; the judge
scores positions `1..L-1`); `prefix` continues the first `prefix_length`
tokens of held-out rows (the judge scores the generated positions, given the
prefix). The reference line is `data_row`: the judge on the held-out rows
themselves, scored at the same positions.

`equal_call_gaps` lists, for every exact FeF row, each parallel baseline given at
least as many sequential calls, and how much higher its judge NLL is.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import tqdm

from fef_jax import generate
from fef_jax.eval import compare
from fef_jax.eval import diversity
from fef_jax.eval import judge as judge_lib
from fef_jax.eval import two_sample
from fef_jax.eval.exactness import parse_sampler
from fef_jax.samplers import selection

MODES = ("unconditional", "prefix")
PARALLEL_BASELINES = ("ancestral", "confidence", "random_sizes")
NUM_EXAMPLES = 3  # decoded samples kept per row, to read what the numbers describe
_Z95 = statistics.NormalDist().inv_cdf(0.975)


# First-hitting's `select` for the FeF orders that fix one order of the positions
# (other orders: first-hitting at random positions).
_FIRST_HITTING_SELECT = {"left_to_right": "position",
                         **{order: order for order in selection.FIXED_ORDERS}}


def _fef_order(spec: str) -> str | None:
  """FeF's order inside a set (`left_to_right` by default); None for other samplers."""
  method, options = parse_sampler(spec)
  return options.get("order", "left_to_right") if method == "fef" else None


def _whole_row(spec: str) -> bool:
  """Whether `spec` is FeF over one drafted state per round (`cache="prefix"`) with one
  set for the whole row (no `block_length`)."""
  method, options = parse_sampler(spec)
  return (method == "fef" and options.get("cache") == "prefix"
          and "block_length" not in options)


def reference_for(variant: str, spec: str, block_length: int) -> str:
  """The exact one-token-per-call sampler of the same factorization as `spec`.

  For a model that is not an exact denoiser, the prefix factorizations in different
  orders are different distributions, so an exact FeF row is tested against the
  one-token decoder of its own order: left to right (FeF's default order inside a
  set) against first-hitting at the leftmost position, the dilated and parity orders
  against first-hitting in that order, random order against first-hitting at random
  positions. On a block-causal model they run in its attention blocks: left to
  right as FeF with `window=1` over the exact cache (one block-local call per
  token), the others as first-hitting in blocks. Every other sampler is tested
  against the random order's reference (the bidirectional model's usual exact
  sampler) or, on a block-causal model, the cached one. FeF with `cache="prefix"`
  and no `block_length` decides the whole row in one set, so its reference is
  first-hitting over the whole row in its order.
  """
  order = _fef_order(spec)
  in_blocks = variant == "block_causal" and not _whole_row(spec)
  if in_blocks and order not in ("random", *selection.FIXED_ORDERS):
    return f"fef:block_length={block_length},cache=exact,window=1"
  options = [f"block_length={block_length}"] if in_blocks else []
  if order in _FIRST_HITTING_SELECT:
    options.append(f"select={_FIRST_HITTING_SELECT[order]}")
  return "first_hitting" + (":" + ",".join(options) if options else "")


def default_samplers(variant: str, gen_length: int, budgets: Sequence[int],
                     fef_options: Sequence[str], block_length: int) -> tuple[str, ...]:
  """The grid for `gen_length` generated tokens: the references its rows need
  (`reference_for`), the parallel baselines (`PARALLEL_BASELINES`) at each budget of
  sequential calls (budgets of `gen_length` or more become `gen_length`, where
  `random_sizes`, then one token per step like `confidence`, is left out), and exact
  FeF with each of `fef_options` (e.g. `"order=random,window=8"`): one step over the
  whole row (bidirectional), one step per attention block over the exact cache
  (block-causal; options with `cache=prefix`: one step over the whole row, its
  rounds over one drafted state), or with the head's sequential drafts (`head`).

  Raises:
    ValueError: an unknown variant, no budget, or no FeF options.
  """
  if variant not in ("bidirectional", "block_causal", "head"):
    raise ValueError(f"unknown model variant {variant!r}")
  if not budgets or not fef_options:
    raise ValueError(f"need call budgets and FeF options, got {budgets} and {fef_options}")
  blocks = f"block_length={block_length}," if variant == "block_causal" else ""
  baselines = []
  for steps in sorted({min(b, gen_length) for b in budgets}):
    for method in PARALLEL_BASELINES:
      if not (method == "random_sizes" and steps == gen_length):
        baselines.append(f"{method}:{blocks}steps={steps}")
  fef = {"bidirectional": "fef:steps=1,", "head": "fef:steps=1,drafter=head,",
         "block_causal": f"fef:block_length={block_length},cache=exact,"}[variant]
  fefs = [("fef:steps=1," if _whole_row(f"fef:{options}") else fef) + options
          for options in fef_options]
  main = reference_for(variant, baselines[0], block_length)
  references = [main] + sorted({reference_for(variant, s, block_length) for s in fefs}
                               - {main})
  return tuple(references + baselines + fefs)


def is_exact(spec: str) -> bool:
  """Whether `spec` samples the model's joint exactly (given an exact denoiser): the
  exact one-token decoders and FeF with copy targets and no approximate cache."""
  method, options = parse_sampler(spec)
  return compare.is_exact_one_token(spec) or (
      method == "fef" and options.get("cache", "none") != "approximate"
      and options.get("verifier", "copies") != "head")


def masked_rows(held_out_NxL: np.ndarray, mode: str, prefix_length: int,
                mask_id: int) -> tuple[np.ndarray, int]:
  """(int32[N, L] rows to sample, the first generated position).

  `unconditional`: every position masked (the judge scores from position 1:
  position 0 has no context). `prefix`: the first `prefix_length` tokens of each
  held-out row kept, the rest masked.

  Raises:
    ValueError: an unknown mode, or a prefix that leaves fewer than 2 positions.
  """
  length = held_out_NxL.shape[1]
  if mode == "unconditional":
    return np.full(held_out_NxL.shape, mask_id, np.int32), 0
  if mode != "prefix":
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
  if not 1 <= prefix_length <= length - 2:
    raise ValueError(f"prefix_length={prefix_length} must lie in [1, {length - 2}] for "
                     f"rows of {length} tokens")
  rows = np.array(held_out_NxL, np.int32)
  rows[:, prefix_length:] = mask_id
  return rows, prefix_length


def _judge_summary(nll_N: np.ndarray) -> dict[str, float]:
  """Mean judge NLL with its normal 95% interval, and generative perplexity."""
  mean = float(nll_N.mean())
  half = _Z95 * float(nll_N.std(ddof=1)) / math.sqrt(nll_N.size) if nll_N.size > 1 else 0.0
  return {"judge_nll": mean, "judge_nll_low": mean - half, "judge_nll_high": mean + half,
          "gen_ppl": math.exp(mean), "gen_ppl_low": math.exp(mean - half),
          "gen_ppl_high": math.exp(mean + half)}


def score(judge: judge_lib.Judge, tokens_NxL: np.ndarray, first_generated: int, *,
          batch_size: int) -> tuple[dict[str, Any], np.ndarray]:
  """(judge and repetition columns, per-sample judge NLL float64[N]) of finished rows
  whose positions `first_generated..L-1` were generated.

  Raises:
    ValueError: a row holding an id outside the judge's vocabulary (a mask).
  """
  nll_N = judge_lib.mean_nll(judge.logits_fn, tokens_NxL, judge.vocab_size,
                             max(first_generated, 1), batch_size=batch_size)
  columns = {"n": int(nll_N.size), **_judge_summary(nll_N),
             **diversity.summary(np.asarray(tokens_NxL)[:, first_generated:])}
  return columns, nll_N


def data_row(judge: judge_lib.Judge, held_out_NxL: np.ndarray, mode: str,
             first_generated: int, *, batch_size: int,
             decode: Callable[[Sequence[int]], str] | None = None
             ) -> tuple[dict[str, Any], np.ndarray]:
  """The reference line: the judge on held-out real text, at the positions a sampler
  generates in `mode` (no model calls, no wall-clock); `examples` as `sample_row`."""
  columns, nll_N = score(judge, held_out_NxL, first_generated, batch_size=batch_size)
  if decode is not None:
    columns["examples"] = [decode(ids)
                           for ids in held_out_NxL[:NUM_EXAMPLES, first_generated:]]
  return {"model": "data", "mode": mode, "sampler": "data", "exact": True, **columns,
          "nfe": 0.0, "sequences": 0.0, "tokens_per_round": float("nan"),
          "acceptance_rate": float("nan"), "seconds": 0.0, "seconds_per_token": 0.0,
          "includes_compile": False}, nll_N


def sample_row(logits_fn: Callable[[jax.Array], jax.Array], judge: judge_lib.Judge,
               rows_NxL: np.ndarray, first_generated: int, spec: str, key: jax.Array, *,
               mask_id: int, batch_size: int,
               decode: Callable[[Sequence[int]], str] | None = None
               ) -> tuple[dict[str, Any], np.ndarray]:
  """One sampler's row (see the module docstring) and its per-sample judge NLL.

  The first batch of `batch_size` rows compiles and is not timed (unless it is the
  only one: then `includes_compile` is True); every sample is judged. With
  `decode`, `examples` holds the generated text of the first `NUM_EXAMPLES` rows.

  Raises:
    ValueError: as `fef_jax.sample` (unknown sampler or option, ...).
  """
  method, options = parse_sampler(spec)
  common = dict(method=method, mask_id=mask_id, batch_size=batch_size, **options)
  filled, stats, timings = [], [], []
  parts = (rows_NxL[:batch_size], rows_NxL[batch_size:])
  for part, part_key in zip(parts, jax.random.split(key)):
    if part.shape[0]:
      start = time.perf_counter()
      tokens, part_stats = generate.sample_in_batches(logits_fn, part, part_key, **common)
      timings.append((time.perf_counter() - start, part.shape[0]))
      filled.append(tokens)
      stats.append(part_stats)
  seconds, timed_rows = timings[-1]  # the rows after the compiling batch, if any
  filled_NxL = np.concatenate(filled)
  stats = jax.tree.map(lambda *xs: np.concatenate(xs), *stats)
  summary = jax.device_get(stats).summary()
  columns, nll_N = score(judge, filled_NxL, first_generated, batch_size=batch_size)
  generated = rows_NxL.shape[1] - first_generated
  if decode is not None:
    columns["examples"] = [decode(ids) for ids in filled_NxL[:NUM_EXAMPLES, first_generated:]]
  return {"sampler": spec, "exact": is_exact(spec), **columns, **summary,
          "seconds": seconds, "seconds_per_token": seconds / (timed_rows * generated),
          "includes_compile": rows_NxL.shape[0] <= batch_size}, nll_N


def welch_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """(mean(x) - mean(y), its 95% interval by Welch's normal approximation)."""
  diff = float(x.mean() - y.mean())
  half = _Z95 * math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
  return diff, diff - half, diff + half


def add_tests(rows: Sequence[dict[str, Any]], nlls: Sequence[np.ndarray],
              reference_of: Callable[[str], str]) -> None:
  """Adds to each row (in place) its `reference` (`reference_of(sampler)`), the
  Mann-Whitney p-value of its judge NLL against the reference row's (`p_value`; None
  for a reference itself), `prob_greater` (`P(NLL > reference's NLL)` estimate),
  `nll_diff` (its mean minus the reference's) with `nll_diff_low`/`nll_diff_high`,
  and `nfe_ratio` (its sequential calls over the reference's).

  Raises:
    ValueError: a row's reference is not among the rows.
  """
  names = [row["sampler"] for row in rows]
  for row, nll in zip(rows, nlls):
    reference = reference_of(row["sampler"])
    if reference not in names:
      raise ValueError(f"the reference {reference!r} of {row['sampler']!r} is not among "
                       f"the samplers {names}")
    reference_row, reference_nll = rows[names.index(reference)], nlls[names.index(reference)]
    diff, low, high = welch_interval(nll, reference_nll)
    row.update(reference=reference, nll_diff=diff, nll_diff_low=low, nll_diff_high=high,
               nfe_ratio=row["nfe"] / reference_row["nfe"])
    if row["sampler"] == reference:
      row.update(p_value=None, prob_greater=0.5)
      continue
    test = two_sample.mann_whitney_u(nll, reference_nll)
    row.update(p_value=test.p_value, prob_greater=test.prob_greater)


def evaluate(logits_fn: Callable[[jax.Array], jax.Array], judge: judge_lib.Judge,
             held_out_NxL: np.ndarray, specs: Sequence[str],
             reference_of: Callable[[str], str], key: jax.Array, *, model: str, mode: str,
             prefix_length: int, mask_id: int, batch_size: int,
             decode: Callable[[Sequence[int]], str] | None = None,
             progress: bool = False) -> list[dict[str, Any]]:
  """Every spec's row for one model and mode, all samplers drawing with `key`, with
  the two-sample tests against each row's reference (`add_tests`) and, with
  `decode`, example texts (`sample_row`).

  Raises:
    ValueError: as `masked_rows`, `sample_row` and `add_tests` (checked before
      sampling: a reference missing from `specs`).
  """
  missing = sorted({reference_of(spec) for spec in specs} - set(specs))
  if missing:
    raise ValueError(f"the references {missing} are not among the samplers {list(specs)}")
  rows_NxL, first_generated = masked_rows(held_out_NxL, mode, prefix_length, mask_id)
  rows, nlls = [], []
  for spec in tqdm.tqdm(specs, desc=f"{model} {mode}", disable=not progress):
    row, nll_N = sample_row(logits_fn, judge, rows_NxL, first_generated, spec, key,
                            mask_id=mask_id, batch_size=batch_size, decode=decode)
    rows.append({"model": model, "mode": mode, **row})
    nlls.append(nll_N)
  add_tests(rows, nlls, reference_of)
  return rows


def _method(spec: str) -> str:
  return parse_sampler(spec)[0]


def equal_call_gaps(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """For each exact FeF row and each parallel baseline of its model and mode, the
  baseline row with the fewest sequential calls among those with at least as many as
  FeF's (none when every baseline row has fewer): `model, mode, fef, fef_nfe,
  fef_nll, fef_entropy, baseline, baseline_nfe, baseline_nll, baseline_entropy, gap`
  (baseline minus FeF, nats per token; > 0: the baseline's text is worse by the
  judge; < 0 with a lower entropy: more repetitive text that the judge finds likely)."""
  gaps = []
  for fef in rows:
    if _method(fef["sampler"]) != "fef" or not fef["exact"] or fef["model"] == "data":
      continue
    group = [r for r in rows if (r["model"], r["mode"]) == (fef["model"], fef["mode"])]
    for method in PARALLEL_BASELINES:
      matched = [r for r in group
                 if _method(r["sampler"]) == method and r["nfe"] >= fef["nfe"]]
      if not matched:
        continue
      base = min(matched, key=lambda r: r["nfe"])
      gaps.append({"model": fef["model"], "mode": fef["mode"], "fef": fef["sampler"],
                   "fef_nfe": fef["nfe"], "fef_nll": fef["judge_nll"],
                   "fef_entropy": fef["entropy"], "baseline": base["sampler"],
                   "baseline_nfe": base["nfe"], "baseline_nll": base["judge_nll"],
                   "baseline_entropy": base["entropy"],
                   "gap": base["judge_nll"] - fef["judge_nll"]})
  return gaps


def _cell(value: Any, fmt: str = ".3f") -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return format(value, fmt)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as Markdown: one table per (model, mode), data row first; exact rows
  marked, the reference in italics, and the equal-call gaps below."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault((row["model"], row["mode"]), []).append(row)
  data = {row["mode"]: row for row in rows if row["model"] == "data"}
  header = ["| sampler | exact | judge NLL (95% CI) | gen. PPL (95% CI) | entropy | dist-2 "
            "| dist-3 | seq. calls | calls / ref. | sequences | tok/round | accept | ms/token "
            "| reference | ΔNLL vs ref. (95% CI) | p (MWU) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  tables = []
  for (model, mode), group in groups.items():
    if model == "data":
      continue
    lines = [f"**{model}, {mode}**", "", *header]
    for row in ([data[mode]] if mode in data else []) + group:
      name = "data (held-out text)" if row["sampler"] == "data" else f"`{row['sampler']}`"
      if row["sampler"] == row.get("reference"):
        name = f"_{name}_"
      diff = ("-" if "nll_diff" not in row else
              f"{row['nll_diff']:+.3f} ({row['nll_diff_low']:+.3f}, "
              f"{row['nll_diff_high']:+.3f})")
      reference = f"`{row['reference']}`" if "reference" in row else "-"
      lines.append(
          f"| {name} | {'yes' if row['exact'] else 'no'} "
          f"| {row['judge_nll']:.3f} ({row['judge_nll_low']:.3f}-{row['judge_nll_high']:.3f}) "
          f"| {row['gen_ppl']:.2f} ({row['gen_ppl_low']:.2f}-{row['gen_ppl_high']:.2f}) "
          f"| {row['entropy']:.3f} | {row['distinct_2']:.3f} | {row['distinct_3']:.3f} "
          f"| {row['nfe']:.1f} | {_cell(row.get('nfe_ratio'), '.2f')} | {row['sequences']:.1f} "
          f"| {_cell(row['tokens_per_round'], '.2f')} | {_cell(row['acceptance_rate'], '.2f')} "
          f"| {1e3 * row['seconds_per_token']:.3f} | {reference} | {diff} "
          f"| {_cell(row.get('p_value'))} |")
    tables.append("\n".join(lines))
  gaps = equal_call_gaps(rows)
  if gaps:
    lines = ["**Equal calls**: each exact FeF row against every parallel baseline given at "
             "least as many sequential calls (gap = baseline's judge NLL minus FeF's)", "",
             "| model | mode | FeF | calls | NLL | entropy | baseline | calls | NLL | entropy "
             "| gap |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {g['model']} | {g['mode']} | `{g['fef']}` | {g['fef_nfe']:.1f} "
              f"| {g['fef_nll']:.3f} | {g['fef_entropy']:.3f} | `{g['baseline']}` "
              f"| {g['baseline_nfe']:.1f} | {g['baseline_nll']:.3f} "
              f"| {g['baseline_entropy']:.3f} | {g['gap']:+.3f} |" for g in gaps]
    tables.append("\n".join(lines))
  return "\n\n".join(tables)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Judge NLL (95% intervals) against sequential calls, against wall-clock per token and
  against unigram entropy (repetitive text scores low on both), one row of panels per
  (model, mode); each baseline family is a line over its budgets, FeF rows are circles,
  references stars, and held-out text the horizontal line (its interval a band; its
  entropy a vertical line)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for row in rows:
    if row["model"] != "data":
      groups.setdefault((row["model"], row["mode"]), []).append(row)
  data = {row["mode"]: row for row in rows if row["model"] == "data"}
  axis_of = (("nfe", "sequential denoiser calls", 1.0, "log"),
             ("seconds_per_token", "wall-clock per generated token (ms)", 1e3, "log"),
             ("entropy", "unigram entropy of the generated tokens (nats)", 1.0, "linear"))
  fig, axes = plt.subplots(len(groups), len(axis_of), figsize=(19, 4.5 * len(groups)),
                           squeeze=False)
  for ax_row, ((model, mode), group) in zip(axes, groups.items()):
    for ax, (field, label, scale, xscale) in zip(ax_row, axis_of):
      for index, method in enumerate(PARALLEL_BASELINES):
        family = sorted((r for r in group if _method(r["sampler"]) == method),
                        key=lambda r: r["nfe"])
        if family:
          ax.errorbar([scale * r[field] for r in family], [r["judge_nll"] for r in family],
                      yerr=_yerr(family), fmt="s-", color=f"C{index + 1}", capsize=2,
                      label=method, alpha=0.8)
      for r in group:
        if _method(r["sampler"]) in PARALLEL_BASELINES:
          continue
        is_reference = r["sampler"] == r["reference"]
        ax.errorbar(scale * r[field], r["judge_nll"], yerr=_yerr([r]),
                    fmt="*" if is_reference else "o", ms=11 if is_reference else 6,
                    color="k" if is_reference else "C0", capsize=2)
        ax.annotate(_label(r["sampler"]), (scale * r[field], r["judge_nll"]),
                    fontsize=6, rotation=20, xytext=(3, 3), textcoords="offset points")
      if mode in data:
        d = data[mode]
        ax.axhline(d["judge_nll"], color="gray", ls="--", lw=1, label="held-out text")
        ax.axhspan(d["judge_nll_low"], d["judge_nll_high"], color="gray", alpha=0.15)
        if field == "entropy":
          ax.axvline(d["entropy"], color="gray", ls=":", lw=1)
      ax.set_xscale(xscale)
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
      ax.set_xlabel(label)
      ax.set_ylabel("judge NLL (nats / token)")
      ax.set_title(f"{model}, {mode} (FeF: blue circles, references: stars)", fontsize=9)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _label(spec: str) -> str:
  """A short plot label: 'fef:block_length=16,cache=exact,window=4' -> 'fef b16 cache w4'."""
  method, _, options = spec.partition(":")
  for long, short in (("block_length=", "b"), ("window=", "w"), ("steps=", "s"),
                      ("cache=exact", "cache"), ("drafter=head", "head drafts")):
    options = options.replace(long, short)
  return " ".join([method.replace("first_hitting", "1/call"), *filter(None, options.split(","))])


def _yerr(rows: Sequence[dict[str, Any]]) -> list[list[float]]:
  return [[r["judge_nll"] - r["judge_nll_low"] for r in rows],
          [r["judge_nll_high"] - r["judge_nll"] for r in rows]]


def _json_value(value: Any) -> Any:
  """JSON has no NaN: undefined columns (acceptance without drafts) are null."""
  return None if isinstance(value, float) and math.isnan(value) else value


def write(rows: Sequence[dict[str, Any]], workdir: str, info: dict[str, Any]) -> dict[str, str]:
  """Writes `text_quality.json` (the list of rows), `text_quality_info.json` (`info`),
  `text_quality.md` and `text_quality.png` into `workdir`; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = {kind: os.path.join(workdir, f"text_quality.{kind}") for kind in ("json", "md", "png")}
  paths["info"] = os.path.join(workdir, "text_quality_info.json")
  with open(paths["json"], "w") as f:
    json.dump([{k: _json_value(v) for k, v in row.items()} for row in rows], f, indent=1)
  with open(paths["info"], "w") as f:
    json.dump(info, f, indent=1, default=str)
  with open(paths["md"], "w") as f:
    f.write(format_table(rows) + "\n")
  plot(rows, paths["png"])
  return paths
