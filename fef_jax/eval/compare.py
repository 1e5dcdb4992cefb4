"""The paper's comparison on trained models: accuracy and speed of every sampler.

For one denoiser, one set of task prompts and one batch size, each sampler spec
(`"method:opt=val,..."`, see `fef_jax.eval.exactness.parse_sampler`) fills
the answers; we report accuracy with a Wilson interval, sequential calls,
sequences evaluated, tokens per round, acceptance rate, wall-clock per
generated token and per sequential call measured after a compile-only warm-up
(`block_until_ready`), the wall-clock of one bare denoiser call of the batch
(so that loop overhead is visible), and the speed-up over the *fastest* exact
one-token-per-call decoder among the rows (`is_exact_one_token`), never a
slower one. Batch 1 is the latency regime, where speculation can pay; large
batches are the throughput regime, where exact copy verification costs
`W / tau >= 1` times the one-token decoder's compute and cannot.

`python -m experiments.compare` runs it on each model of `MODELS` it is asked
for (`training_config`: a bidirectional model, and the same backbone
block-causal with a speculative head, whose rows use the exact cache and the
head's drafts), each row tagged with its `model`; speed-ups are within one
model and batch size. Rows go to JSON, a Markdown table per model and batch
size and a plot of accuracy against wall-clock with the Pareto front marked.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from fef_jax import generate
from fef_jax.data import synthetic
from fef_jax.eval import metrics
from fef_jax.bench import timing
from fef_jax.eval.exactness import parse_sampler
from fef_jax.samplers.loop import VALUE_FREE_RULES
from fef_jax.train import data_source

REFERENCE = "first_hitting"
# The models `experiments.compare` can train and compare (see `training_config`).
BIDIRECTIONAL = "bidirectional"
BLOCK_CAUSAL_HEAD = "block_causal_head"
MODELS = (BIDIRECTIONAL, BLOCK_CAUSAL_HEAD)
# One token per call at a position chosen from revealed tokens only: exact.
_EXACT_FIRST_HITTING_SELECT = ("entropy", *VALUE_FREE_RULES)


def is_exact_one_token(spec: str) -> bool:
  """Whether `spec` decodes one token per sequential call and is exact.

  `first_hitting` with a value-independent `select` (`random`, the default,
  `position`, `entropy`, `dilated` or `parity`), and FeF with `window=1` (one target
  per round, e.g. over an exact cache), unless its targets are approximate
  (`cache="approximate"`) or the head's (`verifier="head"`).
  """
  method, options = parse_sampler(spec)
  if method == "first_hitting":
    return options.get("select", "random") in _EXACT_FIRST_HITTING_SELECT
  return (method == "fef" and options.get("window") == 1
          and options.get("cache", "none") != "approximate"
          and options.get("verifier", "copies") != "head")


def default_samplers(answer_length: int, head: bool = False,
                     approximate_cache: bool = True,
                     exact_cache_block: int | None = None) -> tuple[str, ...]:
  """The issue's grid for answers of `answer_length` tokens.

  The exact one-token-per-call references (first-hitting at random positions,
  left to right and in the dilated order); LLaDA low-confidence at 1, 2, 4
  tokens per step, and at 2 and 4 in the dilated order (the dilated unmasking
  schedule: parallel, not exact, but far-apart tokens); Fast-dLLM threshold; EB;
  ancestral; randomized sizes; FeF commit-set (one step) with windows 2, 4, 8, 16,
  and in the dilated order with windows 4, 8 and `dilated_window(answer_length)`;
  FeF joint-then-remask (2 and 4 steps, windows 4, 8, 16); with `head` (a model
  with a speculative head), FeF with the head's
  sequential drafts verified by the copies (exact; one step, windows 2, 4, 8)
  and FeF verified by the head (the head's joint; one step, windows 4, 8, 16);
  with `approximate_cache` (a bidirectional model), FeF over blocks of half the
  answer with the approximate cache, refreshed per block and also before every
  round, beside the same blocks uncached (what the approximation costs); with
  `exact_cache_block=K` (a block-causal model with attention blocks of `K`),
  the exact one-token decoder over the cache (FeF with `window=1`, one
  block-local call per token) and FeF over the cache with windows 2 and 4,
  blocks of `K` answer positions.
  """
  def steps(tokens_per_step):
    return max(1, answer_length // tokens_per_step)
  specs = [REFERENCE, f"{REFERENCE}:select=position", f"{REFERENCE}:select=dilated"]
  specs += [f"confidence:steps={steps(k)}" for k in (1, 2, 4)]
  specs += [f"confidence:steps={steps(k)},select=dilated" for k in (2, 4)]
  specs += ["threshold:threshold=0.9", "eb:gamma=0.1", f"ancestral:steps={steps(2)}",
            f"random_sizes:steps={steps(2)}"]
  specs += [f"fef:steps=1,window={w}" for w in (2, 4, 8, 16)]
  specs += [f"fef:steps=1,order=dilated,window={w}"
            for w in sorted({4, dilated_window(answer_length), 8})]
  specs += [f"fef:mode=joint_then_remask,steps={s},window={w}" for s in (2, 4)
            for w in (4, 8, 16)]
  if head:
    specs += [f"fef:steps=1,window={w},drafter=head" for w in (2, 4, 8)]
    specs += [f"fef:steps=1,window={w},verifier=head" for w in (4, 8, 16)]
  if exact_cache_block:
    cached = f"fef:block_length={exact_cache_block},cache=exact"
    specs += [f"{cached},window={w}" for w in (1, 2, 4)]
  if approximate_cache:
    blocks = f"fef:block_length={max(1, answer_length // 2)},window=4"
    specs += [blocks, f"{blocks},cache=approximate",
              f"{blocks},cache=approximate,refresh_every=1"]
  return tuple(specs)


def dilated_window(answer_length: int) -> int:
  """FeF's window for the dilated order over an answer of `answer_length` tokens: half
  of it (at least 1), the positions of one parity, which the order puts first.

  On PairSum those are the first digits of every pair: nearly independent of each
  other, so one round accepts them all, and the next drafts each second digit from a
  copy that reveals its first.
  """
  return max(1, answer_length // 2)


def cached_samplers(answer_length: int, block_length: int) -> tuple[str, ...]:
  """The grid of a block-causal model (attention blocks of `block_length = K`
  positions) with a speculative head, for answers of `answer_length` tokens.

  The exact one-token-per-call references (first-hitting at random positions,
  left to right, in the dilated order and in the parity order); LLaDA
  low-confidence at one token per step, and in two steps in the dilated order
  (each step one parity); uncached FeF (one step) with window 2 and marginal or
  the head's drafts, and in the dilated order with
  `dilated_window(answer_length)`; one-step FeF in the parity order with as many
  copies, whose rounds evaluate the drafted state and one attention block per copy
  (`cache="prefix"`, `fef_jax.samplers.shared_prefix`); the exact one-token
  decoder over the exact cache (FeF with `window=1`: one block-local call per
  token, which also moves the cache into the next block, see
  `fef_jax.samplers.cache.fused_rounds`); and FeF over the exact cache, blocks of
  `K` answer positions, with marginal and with the head's drafts, for the windows
  2, 4, 8 that fit in a block (`w <= K`).
  """
  half = dilated_window(answer_length)
  specs = [REFERENCE, f"{REFERENCE}:select=position", f"{REFERENCE}:select=dilated",
           f"{REFERENCE}:select=parity",
           f"confidence:steps={answer_length}", "confidence:steps=2,select=dilated",
           "fef:steps=1,window=2",
           "fef:steps=1,window=2,drafter=head",
           f"fef:steps=1,order=dilated,window={half}",
           f"fef:steps=1,order=parity,window={half},cache=prefix"]
  cached = f"fef:block_length={block_length},cache=exact"
  specs.append(f"{cached},window=1")
  for window in (2, 4, 8):
    if window <= block_length:
      specs += [f"{cached},window={window}", f"{cached},window={window},drafter=head"]
  return tuple(specs)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks, before any training, that the comparison can run with `config` (the
  experiment's: training fields and `config.compare`).

  Raises:
    ValueError: naming the field: `compare.models` not a non-empty subset of
      `MODELS`, data that is not a task, or (with `BLOCK_CAUSAL_HEAD`) a
      `compare.block_length` that does not divide the task's prompt and answer
      lengths (each answer block of the exact cache must lie in one attention
      block).
  """
  models = tuple(config.compare.models)
  unknown = sorted(set(models) - set(MODELS))
  if not models or unknown:
    raise ValueError(f"compare.models={models}: expected a non-empty subset of {MODELS}")
  if config.data.kind != "task":
    raise ValueError(f"the comparison needs task data (data.kind='task'), got "
                     f"{config.data.kind!r}")
  if BLOCK_CAUSAL_HEAD not in models or config.data.task not in data_source.TASKS:
    return  # an unknown task: the training loop names it
  task = data_source.TASKS[config.data.task](**config.data.task_kwargs)
  block = config.compare.block_length
  if block < 1 or task.prompt_length % block or task.answer_length % block:
    raise ValueError(
        f"compare.block_length={block} must divide the prompt ({task.prompt_length} tokens) "
        f"and the answer ({task.answer_length}) of {config.data.task} "
        f"{dict(config.data.task_kwargs)}: the exact cache needs every answer block inside "
        f"one attention block; or leave {BLOCK_CAUSAL_HEAD!r} out of compare.models")


def training_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The training config of comparison model `name` (one of `MODELS`).

  `config` is the experiment's config: the training fields shared by every
  model (data, backbone size, optimizer, steps) and `config.compare`.
  `BIDIRECTIONAL`: full attention, no head. `BLOCK_CAUSAL_HEAD`: attention
  blocks of `compare.block_length` positions and a speculative head of
  `compare.head_layers` layers, trained jointly (`loss.head_weight=1`).

  Raises:
    ValueError: an unknown name.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
  out = ml_collections.ConfigDict(config.to_dict())
  if name == BIDIRECTIONAL:
    out.model.update(attention="bidirectional", block_length=None, head_layers=0)
    out.loss.head_weight = 0.0
  else:
    out.model.update(attention="block_causal", block_length=config.compare.block_length,
                     head_layers=config.compare.head_layers)
    out.loss.head_weight = 1.0
  return out


def samplers_for(config: ml_collections.ConfigDict, name: str,
                 answer_length: int) -> tuple[str, ...]:
  """The sampler specs of model `name`: `compare.samplers` (`BIDIRECTIONAL`) or
  `compare.cached_samplers` (`BLOCK_CAUSAL_HEAD`), or where empty the default grid
  (`default_samplers` with the approximate-cache rows unless the model is
  time-conditioned; `cached_samplers`)."""
  if name == BIDIRECTIONAL:
    return tuple(config.compare.samplers) or default_samplers(
        answer_length, approximate_cache=not config.model.time_conditioning)
  return tuple(config.compare.cached_samplers) or cached_samplers(
      answer_length, config.compare.block_length)


def bare_call_seconds(logits_fn: Callable[[jax.Array], jax.Array], tokens_BxL: np.ndarray,
                      repeats: int = 20) -> float:
  """Median wall-clock of one jitted denoiser call on `tokens_BxL` (after a warm-up)."""
  call = jax.jit(lambda t: logits_fn(t))  # pylint: disable=unnecessary-lambda
  return timing.median_seconds(call, jnp.asarray(tokens_BxL), repeats=repeats)


def compare(logits_fn: Callable[[jax.Array], jax.Array], task: synthetic.Task,
            prompts_NxP: np.ndarray, specs: Sequence[str], key: jax.Array, *,
            batch_size: int = 256, parts: int = 8,
            progress: bool = False) -> list[dict[str, Any]]:
  """One row per sampler spec: accuracy, costs and wall-clock on `prompts_NxP`.

  Each spec is first run once on one batch to compile (not timed). Then the
  batches are split into `parts` consecutive parts (fewer when there are fewer
  batches), and every spec samples each part in turn, the specs' order rotating
  from part to part: a slow spell of a shared machine then falls on every spec
  alike instead of on whichever ran during it. A spec's wall-clock is the sum of
  its `fef_jax.sample` calls, each until its results are ready (no key derivation
  or transfers; `generate.sample_in_batches`). Every spec uses the same `key`,
  and its samples do not depend on `parts`. At least one spec must be an exact
  one-token decoder (`is_exact_one_token`); speed-ups are relative to the
  fastest of them.

  Returns:
    Dicts with `sampler, accuracy, accuracy_low, accuracy_high, n, batch_size,
    seconds, seconds_per_token, ms_per_call, bare_call_ms, call_overhead,
    part_seconds, reference, speedup, speedup_low, speedup_high` and the
    `SampleStats.summary()` fields. `speedup_low` and `speedup_high` are the
    smallest and largest speed-up measured within one part (the same prompts for
    every spec): how far timing noise moves it. `ms_per_call`
    is the wall-clock per sequential call of a batch, whose loop runs until its
    slowest row is done (exact at batch 1); `call_overhead` is its ratio to
    `bare_call_ms`, one jitted denoiser call of the batch.

  Raises:
    ValueError: `specs` without an exact one-token decoder, an unknown sampler or
      option, prompts that do not fit the task, `parts < 1`.
  """
  if not any(is_exact_one_token(spec) for spec in specs):
    raise ValueError(f"the comparison needs an exact one-token-per-call reference (e.g. "
                     f"{REFERENCE!r}) among the specs to compute speed-ups; got {list(specs)}")
  if parts < 1:
    raise ValueError(f"parts must be >= 1, got {parts}")
  num, _ = prompts_NxP.shape
  batch_size = min(batch_size, num)
  tokens_NxL = np.concatenate(
      [prompts_NxP, np.full((num, task.answer_length), task.mask_id)], axis=1).astype(np.int32)
  bare_ms = 1e3 * bare_call_seconds(logits_fn, tokens_NxL[:batch_size])
  commons = []
  for spec in specs:
    method, options = parse_sampler(spec)
    commons.append(dict(method=method, mask_id=task.mask_id, batch_size=batch_size,
                        **options))
    generate.sample_in_batches(logits_fn, tokens_NxL[:batch_size], key, **commons[-1])
  num_batches = -(-num // batch_size)
  bounds = np.linspace(0, num_batches, min(parts, num_batches) + 1).astype(int)
  part_seconds = np.zeros((len(specs), len(bounds) - 1))
  outputs = [[] for _ in specs]
  with tqdm.tqdm(total=part_seconds.size, disable=not progress,
                 desc=f"samplers (batch {batch_size})") as bar:
    for part, (first, end) in enumerate(zip(bounds[:-1], bounds[1:])):
      for i in np.roll(np.arange(len(specs)), -part):
        timings = []
        outputs[i].append(generate.sample_in_batches(
            logits_fn, tokens_NxL[first * batch_size:end * batch_size], key,
            first_batch=int(first), timings=timings, **commons[i]))
        part_seconds[i, part] = sum(timings)
        bar.update()
  rows = []
  for spec, spec_outputs, spec_part_seconds in zip(specs, outputs, part_seconds):
    filled = np.concatenate([out[0] for out in spec_outputs])
    stats = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[out[1] for out in spec_outputs])
    seconds = float(np.sum(spec_part_seconds))
    valid = task.check(prompts_NxP, filled[:, prompts_NxP.shape[1]:])
    low, high = metrics.wilson_interval(int(valid.sum()), num)
    summary = stats.summary()
    # Each batch's loop runs until its slowest row is done.
    nfe_B = np.asarray(stats.nfe)
    sequential_calls = sum(int(nfe_B[lo:lo + batch_size].max())
                           for lo in range(0, num, batch_size))
    ms_per_call = 1e3 * seconds / max(sequential_calls, 1)
    rows.append({"sampler": spec, "accuracy": float(valid.mean()), "accuracy_low": low,
                 "accuracy_high": high, "n": num, "batch_size": batch_size,
                 "seconds": seconds,
                 "seconds_per_token": seconds / max(summary["tokens"] * num, 1),
                 "ms_per_call": ms_per_call, "bare_call_ms": bare_ms,
                 "call_overhead": ms_per_call / bare_ms,
                 "part_seconds": spec_part_seconds.tolist(), **summary})
  reference = min((r for r in rows if is_exact_one_token(r["sampler"])),
                  key=lambda r: r["seconds_per_token"])
  for row in rows:
    row["reference"] = reference["sampler"]
    row["speedup"] = reference["seconds_per_token"] / row["seconds_per_token"]
    # Every part has the same prompts for every spec, so the ratio of its seconds is
    # that part's speed-up; the whole run's lies between their extremes.
    part_speedups = np.asarray(reference["part_seconds"]) / np.asarray(row["part_seconds"])
    row["speedup_low"], row["speedup_high"] = (float(part_speedups.min()),
                                               float(part_speedups.max()))
  return rows


def _speedup(row: dict[str, Any]) -> str:
  """`1.19x`, with the range over parts when there were several: `1.19x (1.10-1.28)`."""
  text = f"{row['speedup']:.2f}x"
  if len(row.get("part_seconds", ())) > 1:
    text += f" ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})"
  return text


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
  """The comparison as Markdown, one table per model and batch size (in the rows'
  order; a heading names both). Pareto-optimal samplers in bold; speed-ups over
  that model and batch size's fastest exact one-token decoder, in italics. Rows
  without a `model` field make one table per batch size."""
  tables = []
  for (model, batch_size), group in _groups(rows).items():
    front = set(pareto_front(group))
    bare_ms = group[0]["bare_call_ms"]
    title = f"Batch {batch_size}" if model is None else f"Model `{model}`, batch {batch_size}"
    lines = [f"{title} (one bare denoiser call of the batch: {bare_ms:.3f} ms; "
             f"speed-up over the fastest exact one-token decoder, "
             f"`{group[0]['reference']}`):", "",
             "| sampler | accuracy (95% CI) | seq. calls | sequences | tokens/round | "
             "accept | ms/token | ms/call | call / bare call | speed-up (range over parts) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in group:
      name = f"`{r['sampler']}`"
      name = f"**{name}**" if r["sampler"] in front else name
      name = f"_{name}_" if r["sampler"] == r["reference"] else name
      accept = "-" if np.isnan(r["acceptance_rate"]) else f"{r['acceptance_rate']:.2f}"
      lines.append(
          f"| {name} | {r['accuracy']:.3f} ({r['accuracy_low']:.3f}-{r['accuracy_high']:.3f}) "
          f"| {r['nfe']:.2f} | {r['sequences']:.1f} | {r['tokens_per_round']:.2f} | {accept} "
          f"| {1e3 * r['seconds_per_token']:.3f} | {r['ms_per_call']:.3f} "
          f"| {r['call_overhead']:.2f} | {_speedup(r)} |")
    tables.append("\n".join(lines))
  return "\n\n".join(tables)


def _groups(rows: Sequence[dict[str, Any]]
            ) -> dict[tuple[str | None, int], list[dict[str, Any]]]:
  """(model or None, batch size) -> its rows, in order of first appearance."""
  groups: dict[tuple[str | None, int], list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault((row.get("model"), row["batch_size"]), []).append(row)
  return groups


def _short(spec: str) -> str:
  """'fef:mode=joint_then_remask,steps=2,window=8' -> 'fef jtr s2 w8' (plot labels)."""
  method, _, options = spec.partition(":")
  abbreviations = {"mode=joint_then_remask": "jtr", "steps=": "s", "window=": "w",
                   "threshold=": "t", "gamma=": "g", "block_length=": "b", "cache=": "",
                   "drafter=head": "head-drafts", "verifier=head": "head-verifier",
                   "refresh_every=": "refresh"}
  parts = []
  for option in filter(None, options.split(",")):
    for long, short in abbreviations.items():
      option = option.replace(long, short)
    parts.append(option)
  return " ".join([method.replace("random_sizes", "rand").replace("first_hitting", "1/call")]
                  + [part.replace("select=", "") for part in parts])


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Accuracy (with intervals) against wall-clock per token, one panel per batch size,
  and against sequential calls (of the smallest batch size): one row of panels per
  model (rows without a `model` field: one row).

  Wall-clock is what this machine measured; sequential calls are the latency
  on an accelerator that evaluates FeF's `W` copies in parallel. Each
  wall-clock panel dashes its Pareto front and marks its fastest exact
  one-token decoder (of that model and batch size) with a vertical line.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = _groups(rows)
  models = list(dict.fromkeys(model for model, _ in groups))
  layout = []  # per model: its panels (rows, x of a row, x label)
  for model in models:
    by_batch = {batch: group for (m, batch), group in groups.items() if m == model}
    panels = [(group, lambda r: 1e3 * r["seconds_per_token"],
               f"wall-clock per generated token (ms), batch {batch_size}")
              for batch_size, group in by_batch.items()]
    panels.append((by_batch[min(by_batch)], lambda r: r["nfe"],
                   "sequential denoiser calls per answer"))
    layout.append((model, panels))
  columns = max(len(panels) for _, panels in layout)
  fig, axes = plt.subplots(len(layout), columns, figsize=(6.5 * columns, 5 * len(layout)),
                           sharey=True, squeeze=False)
  for axes_row, (model, panels) in zip(axes, layout):
    for ax in axes_row[len(panels):]:
      ax.set_visible(False)
    for ax, (group, x_of, label) in zip(axes_row, panels):
      _plot_panel(ax, group, x_of, label)
      if model is not None:
        ax.set_title(f"model: {model}", fontsize=10)
    axes_row[0].set_ylabel("accuracy (valid answers)")
  fig.suptitle("FeF (blue circles) vs baselines (orange squares)")
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def _plot_panel(ax: Any, group: Sequence[dict[str, Any]], x_of: Callable[[dict], float],
                label: str) -> None:
  """One panel of `plot`: the rows of one model and batch size against `x_of`."""
  for r in group:
    fef = r["sampler"].startswith("fef")
    ax.errorbar(x_of(r), r["accuracy"],
                yerr=[[r["accuracy"] - r["accuracy_low"]],
                      [r["accuracy_high"] - r["accuracy"]]],
                fmt="o" if fef else "s", color="C0" if fef else "C1", alpha=0.8, capsize=2)
    ax.annotate(_short(r["sampler"]), (x_of(r), r["accuracy"]), fontsize=6, rotation=30,
                xytext=(3, 3), textcoords="offset points")
  reference = next(r for r in group if r["sampler"] == r["reference"])
  ax.axvline(x_of(reference), color="gray", lw=1, ls=":",
             label=f"fastest exact one-token ({_short(reference['sampler'])})")
  if "wall-clock" in label:
    front = sorted((r for r in group if r["sampler"] in set(pareto_front(group))),
                   key=lambda r: r["seconds_per_token"])
    ax.plot([x_of(r) for r in front], [r["accuracy"] for r in front], "k--", lw=1,
            label="Pareto front (wall-clock)")
  ax.set_xscale("log")
  ax.set_xlabel(label)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=7)


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
