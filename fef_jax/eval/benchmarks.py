"""One entry for the three benchmarks: load the data from a path, run the harness.

`run("gsm8k" | "mbpp" | "humaneval", completion_fn, data_path, ...)` returns the
harness result (`Gsm8kResult` or `CodeResult`) whose `to_json()` holds the
score, its 95% interval and every item.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from fef_jax.data import text
from fef_jax.eval import code
from fef_jax.eval import gsm8k

BENCHMARKS = ("gsm8k", "mbpp", "humaneval")
MBPP_TEST_IDS = range(11, 511)  # the upstream test split


def load(name: str, data_path: str, limit: Optional[int] = None) -> list[Any]:
  """The benchmark's problems (MBPP: its test split, task ids 11-510), first `limit` only.

  Raises:
    ValueError: an unknown benchmark, or `limit` < 1; loader errors
      (FileNotFoundError, malformed lines named by path:line).
  """
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")
  if limit is not None and limit < 1:
    raise ValueError(f"limit must be >= 1, got {limit}")
  if name == "gsm8k":
    problems = text.load_gsm8k(data_path)
  elif name == "mbpp":
    problems = [r for r in text.load_mbpp(data_path) if r.task_id in MBPP_TEST_IDS]
  else:
    problems = code.load_humaneval(data_path)
  return problems[:limit]


def run(name: str, completion_fn: Callable[[list[str]], list[str]], data_path: str, *,
        batch_size: int, limit: Optional[int] = None, num_shots: int = 0,
        shots_path: Optional[str] = None, progress: bool = False) -> Any:
  """Scores `completion_fn` on benchmark `name`.

  Args:
    name: "gsm8k", "mbpp" or "humaneval".
    completion_fn: a batch of prompts -> a batch of completions
      (`fef_jax.eval.completion`).
    data_path: the benchmark file (GSM8K test.jsonl, mbpp.jsonl, HumanEval.jsonl).
    batch_size: prompts per `completion_fn` call.
    limit: score the first `limit` problems only.
    num_shots: GSM8K solved examples per prompt, from `shots_path`.
    shots_path: the GSM8K file to take examples from (e.g. train.jsonl).
    progress: progress bars.

  Raises:
    ValueError: as `load`; `num_shots` > 0 without `shots_path`, or for a code
      benchmark.
  """
  problems = load(name, data_path, limit)
  if num_shots and (name != "gsm8k" or not shots_path):
    raise ValueError("num_shots needs the gsm8k benchmark and a shots_path")
  if name == "gsm8k":
    shots = text.load_gsm8k(shots_path) if num_shots else None
    return gsm8k.evaluate_gsm8k(completion_fn, problems, batch_size=batch_size,
                                num_shots=num_shots, shots_from=shots, progress=progress)
  evaluate = code.evaluate_mbpp if name == "mbpp" else code.evaluate_humaneval
  return evaluate(completion_fn, problems, batch_size=batch_size, progress=progress)
