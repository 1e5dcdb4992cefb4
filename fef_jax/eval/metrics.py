"""Summary statistics for benchmark results, and the batched generation loop.

- `wilson_interval`: the Wilson score interval of a binomial proportion, the
  interval reported for accuracy and single-sample pass@1.
- `pass_at_k`: the unbiased pass@k estimator of Chen et al. 2021 ("Evaluating
  Large Language Models Trained on Code", eq. 1) for one problem.
- `mean_pass_at_k`: its mean over problems with a bootstrap or normal interval.
- `generate_batched`: calls a model-agnostic `generate_fn` batch by batch, the
  loop every harness in this package shares.

Every function raises `ValueError` on invalid input (counts out of range,
confidence outside (0, 1), empty input) instead of returning NaN.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Callable, Sequence

import numpy as np

GenerateFn = Callable[[list[str]], list[str]]


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A point estimate with a confidence interval.

  Attributes:
    value: the estimate (a proportion or mean pass@k, in [0, 1]).
    low, high: the interval's bounds, `low <= value <= high`.
    n: how many items (problems) the estimate is over.
    confidence: the interval's nominal coverage, e.g. 0.95.
    method: how the interval was computed ("wilson", "normal", "bootstrap").
  """
  value: float
  low: float
  high: float
  n: int
  confidence: float
  method: str

  def to_json(self) -> dict[str, float | int | str]:
    """The fields as a JSON-serialisable dict."""
    return dataclasses.asdict(self)


def _check_int(name: str, value: int, minimum: int) -> None:
  """Raises ValueError unless `value` is an int (not a bool) >= `minimum`."""
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
    raise ValueError(f"{name} must be an integer, got {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _z_score(confidence: float) -> float:
  """The two-sided standard normal quantile for `confidence` in (0, 1)."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int,
                    confidence: float = 0.95) -> tuple[float, float]:
  """The Wilson score interval for a binomial proportion `successes / n`.

  Args:
    successes: the number of successes, 0 <= successes <= n.
    n: the number of trials, >= 1.
    confidence: the nominal coverage, in (0, 1).

  Returns:
    (low, high), both within [0, 1] and containing `successes / n`.

  Raises:
    ValueError: a count is not an integer, n < 1, successes outside [0, n], or
      confidence outside (0, 1).
  """
  _check_int("n", n, 1)
  _check_int("successes", successes, 0)
  if successes > n:
    raise ValueError(f"successes ({successes}) must be <= n ({n}).")
  z = _z_score(confidence)
  p = successes / n
  denominator = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denominator
  half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  # Clip rounding error so the interval always contains p and stays in [0, 1].
  return max(0.0, min(center - half, p)), min(1.0, max(center + half, p))


def proportion(successes: int, n: int, confidence: float = 0.95) -> Estimate:
  """`successes / n` with its Wilson interval (see `wilson_interval`)."""
  low, high = wilson_interval(successes, n, confidence)
  return Estimate(successes / n, low, high, n, confidence, "wilson")


def pass_at_k(n: int, c: int, k: int) -> float:
  """The unbiased pass@k estimate `1 - C(n - c, k) / C(n, k)` for one problem.

  The probability that at least one of k samples drawn without replacement
  from the n generated samples is correct, when c of them are. Computed as
  `1 - prod_{i = n - c + 1}^{n} (1 - k / i)`, which avoids huge binomials.

  Args:
    n: samples generated for the problem, >= 1.
    c: how many of them are correct, 0 <= c <= n.
    k: the k of pass@k, 1 <= k <= n.

  Raises:
    ValueError: a count is not an integer or is out of range.
  """
  _check_int("n", n, 1)
  _check_int("c", c, 0)
  _check_int("k", k, 1)
  if c > n:
    raise ValueError(f"c ({c}) must be <= n ({n}).")
  if k > n:
    raise ValueError(f"k ({k}) must be <= n ({n}): pass@k needs at least k "
                     "samples per problem.")
  if n - c < k:
    return 1.0
  return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(num_samples: int | Sequence[int], num_correct: Sequence[int],
                   k: int, *, confidence: float = 0.95,
                   method: str = "bootstrap", num_bootstrap: int = 10_000,
                   seed: int = 0) -> Estimate:
  """Mean pass@k over problems, with an interval over the problems.

  Args:
    num_samples: samples per problem, one int for all or one per problem.
    num_correct: correct samples per problem.
    k: the k of pass@k; every problem needs at least k samples.
    confidence: the nominal coverage, in (0, 1).
    method: "bootstrap" (percentile interval of the mean over problems
      resampled with replacement) or "normal" (mean +- z * standard error,
      clipped to [0, 1]).
    num_bootstrap: bootstrap resamples, >= 1 (bootstrap only).
    seed: the bootstrap's random seed.

  Returns:
    The mean of `pass_at_k` over problems with its interval; n is the number
    of problems. With a single problem both intervals collapse to the mean.

  Raises:
    ValueError: no problems, lengths differ, an unknown method, or any count
      that `pass_at_k` rejects (the message names the problem's index).
  """
  if method not in ("bootstrap", "normal"):
    raise ValueError(f"method must be 'bootstrap' or 'normal', got {method!r}.")
  z = _z_score(confidence)
  num_correct = list(num_correct)
  if not num_correct:
    raise ValueError("mean_pass_at_k needs at least one problem.")
  if isinstance(num_samples, (int, np.integer)):
    num_samples = [num_samples] * len(num_correct)
  num_samples = list(num_samples)
  if len(num_samples) != len(num_correct):
    raise ValueError(f"num_samples has {len(num_samples)} entries but "
                     f"num_correct has {len(num_correct)}.")
  scores = []
  for index, (n, c) in enumerate(zip(num_samples, num_correct)):
    try:
      scores.append(pass_at_k(n, c, k))
    except ValueError as e:
      raise ValueError(f"problem {index}: {e}") from e
  scores = np.asarray(scores)
  mean = float(scores.mean())
  if method == "normal":
    half = z * float(scores.std(ddof=1)) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0
    low, high = max(0.0, mean - half), min(1.0, mean + half)
  else:
    _check_int("num_bootstrap", num_bootstrap, 1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(scores), size=(num_bootstrap, len(scores)))
    means = scores[picks].mean(axis=1)
    alpha = 1 - confidence
    low, high = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    low, high = min(low, mean), max(high, mean)
  return Estimate(mean, low, high, len(scores), confidence, method)


def generate_batched(generate_fn: GenerateFn, prompts: Sequence[str], *,
                     batch_size: int, progress: bool = False,
                     desc: str = "generate") -> list[str]:
  """`generate_fn` applied to `prompts` in consecutive batches, in order.

  Args:
    generate_fn: maps a list of prompt strings to a list of completions of the
      same length.
    prompts: all prompts; the last batch may be smaller than `batch_size`.
    batch_size: prompts per call, >= 1.
    progress: show a tqdm progress bar over batches.
    desc: the progress bar's label.

  Returns:
    One completion per prompt.

  Raises:
    ValueError: batch_size < 1, or `generate_fn` returned something other than
      a list of as many strings as it was given.
  """
  from tqdm.auto import tqdm  # only harness runs need the progress bar
  _check_int("batch_size", batch_size, 1)
  completions = []
  starts = range(0, len(prompts), batch_size)
  for start in tqdm(starts, disable=not progress, desc=desc, unit="batch"):
    batch = list(prompts[start:start + batch_size])
    outputs = generate_fn(batch)
    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch):
      got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
      raise ValueError(f"generate_fn returned {got} for a batch of {len(batch)} "
                       "prompts; it must return one string per prompt.")
    for offset, output in enumerate(outputs):
      if not isinstance(output, str):
        raise ValueError(f"generate_fn returned {type(output).__name__} for "
                         f"prompt {start + offset}; completions must be str.")
    completions.extend(outputs)
  return completions
