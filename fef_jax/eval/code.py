"""Code-generation evaluation: MBPP and HumanEval pass@1, run in the sandbox.

Each harness builds one prompt per problem, asks `generate_fn` for one
completion each, cleans the completion (`postprocess`), assembles a test
program and runs it with `fef_jax.eval.sandbox.run_many`; a problem passes
when its program runs to its end. pass@1 comes with a 95% Wilson interval.

- MBPP (`fef_jax.data.text.load_mbpp`): the prompt is the task's text and its
  first test inside a docstring, as in bigcode-evaluation-harness; the
  completion is a whole solution; the program is the completion, the task's
  setup code and all of `test_list`.
- HumanEval (`load_humaneval`, the `HumanEval.jsonl` format of
  openai/human-eval, decompressed): the prompt is the problem's `prompt` (a
  signature and docstring); the completion is the function body; the program
  is prompt + completion + `test` + `check(<entry_point>)`.

`postprocess`: a completion holding a Markdown code fence is replaced by the
fence's content (a chat-style answer: the fence delimits the code); any other
completion is cut at the first of the benchmark's stop sequences, which mark
the start of new top-level code after the solution.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Callable, Sequence

from fef_jax.data.text import MbppRecord
from fef_jax.data.text import _read_jsonl  # the loaders' shared JSONL reader
from fef_jax.eval import metrics
from fef_jax.eval import sandbox

MBPP_STOP_SEQUENCES = ("\nassert", '\n"""', "\nprint(", "\nif __name__")
HUMANEVAL_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(",
                            "\nassert ", "\n#")
# A Markdown fence: "```" with an optional language tag, up to the closing
# fence or the end of the text.
_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class HumanEvalProblem:
  """One HumanEval problem (one line of `HumanEval.jsonl`).

  Attributes:
    task_id: e.g. "HumanEval/0".
    prompt: the function's signature and docstring, ending in its body.
    canonical_solution: a reference body for the prompt.
    test: code defining `check(candidate)`, which asserts on candidate.
    entry_point: the name of the function `check` is called with.
  """
  task_id: str
  prompt: str
  canonical_solution: str
  test: str
  entry_point: str


@dataclasses.dataclass(frozen=True)
class CodeItem:
  """One graded problem.

  Attributes:
    task_id: the problem's id (an int for MBPP, a str for HumanEval).
    prompt: the prompt given to the model.
    completion: the model's completion, as generated.
    code: the completion after `postprocess`, as it went into the program.
    passed: the test program ran to its end.
    status: the sandbox's status ("passed", "failed", "timeout", "memory",
      "error").
    reason: "" when passed, else one line saying why.
  """
  task_id: int | str
  prompt: str
  completion: str
  code: str
  passed: bool
  status: str
  reason: str


@dataclasses.dataclass(frozen=True)
class CodeResult:
  """pass@1 over a code benchmark.

  Attributes:
    benchmark: "mbpp" or "humaneval".
    items: one `CodeItem` per problem, in input order.
    pass_at_1: the fraction passed with its 95% Wilson interval.
  """
  benchmark: str
  items: tuple[CodeItem, ...]
  pass_at_1: metrics.Estimate

  def to_json(self) -> dict[str, object]:
    """The summary and every item as a JSON-serialisable dict."""
    return {"benchmark": self.benchmark, "pass_at_1": self.pass_at_1.to_json(),
            "items": [dataclasses.asdict(item) for item in self.items]}


def load_humaneval(path: str | pathlib.Path) -> list[HumanEvalProblem]:
  """HumanEval problems from a JSONL file (e.g. `HumanEval.jsonl`), in file order.

  Lines need the string keys `task_id`, `prompt`, `canonical_solution`,
  `test` and `entry_point`; other keys are ignored; blank lines are skipped.

  Raises:
    FileNotFoundError: `path` is not a file.
    ValueError: invalid UTF-8 or JSON, a line that is not an object, or a
      missing or non-string key, naming the file and line.
  """
  fields = {field.name: str for field in dataclasses.fields(HumanEvalProblem)}
  return [HumanEvalProblem(**{name: row[name] for name in fields})
          for _, _, row in _read_jsonl(path, "HumanEval", fields)]


def mbpp_prompt(record: MbppRecord) -> str:
  """The MBPP prompt: the task's text and first test in a docstring.

  Raises:
    ValueError: the record has no tests.
  """
  if not record.test_list:
    raise ValueError(f"MBPP task {record.task_id} has no tests.")
  return f'"""\n{record.text}\n{record.test_list[0]}\n"""\n'


def humaneval_prompt(problem: HumanEvalProblem) -> str:
  """The HumanEval prompt: the problem's own prompt, unchanged."""
  return problem.prompt


def postprocess(completion: str, stop_sequences: Sequence[str]) -> str:
  """The code in a completion: a fenced block's content, else the text up to a stop.

  Args:
    completion: the model's output.
    stop_sequences: used when there is no code fence; the completion is cut
      at the earliest occurrence of any of them.

  Returns:
    The content of the first Markdown code fence (up to its closing fence or
    the end), or `completion` up to the first stop sequence.
  """
  fence = _FENCE.search(completion)
  if fence:
    return fence.group(1)
  cut = min((i for i in map(completion.find, stop_sequences) if i >= 0),
            default=len(completion))
  return completion[:cut]


def mbpp_program(record: MbppRecord, code: str) -> str:
  """The MBPP test program: the solution `code`, the setup code, then every test.

  The setup code comes after the solution because it builds test inputs from
  the solution's definitions (tasks 367 and 927 build trees of its `Node`).
  """
  return "\n".join([code, record.test_setup_code, *record.test_list]) + "\n"


def humaneval_program(problem: HumanEvalProblem, code: str) -> str:
  """The HumanEval test program: prompt + body `code` + tests + `check(entry_point)`."""
  return (f"{problem.prompt}{code}\n\n{problem.test}\n\n"
          f"check({problem.entry_point})\n")


def _evaluate(benchmark: str, generate_fn: metrics.GenerateFn,
              task_ids: Sequence[int | str], prompts: Sequence[str],
              program: Callable[[int, str], str], stop_sequences: Sequence[str], *,
              batch_size: int, progress: bool, timeout_s: float, memory_mb: int,
              workers: int) -> CodeResult:
  """Generates, post-processes, runs and grades; `program(index, code)` assembles."""
  if not prompts:
    raise ValueError(f"evaluating {benchmark} needs at least one problem.")
  completions = metrics.generate_batched(generate_fn, prompts, batch_size=batch_size,
                                         progress=progress, desc=benchmark)
  codes = [postprocess(completion, stop_sequences) for completion in completions]
  results = sandbox.run_many([program(i, code) for i, code in enumerate(codes)],
                             workers=workers, timeout_s=timeout_s, memory_mb=memory_mb)
  items = tuple(
      CodeItem(task_id, prompt, completion, code, result.passed, result.status,
               result.reason)
      for task_id, prompt, completion, code, result in zip(
          task_ids, prompts, completions, codes, results))
  return CodeResult(benchmark, items,
                    metrics.proportion(sum(item.passed for item in items), len(items)))


def evaluate_mbpp(generate_fn: metrics.GenerateFn, records: Sequence[MbppRecord], *,
                  batch_size: int, progress: bool = False, timeout_s: float = 10.0,
                  memory_mb: int = 1024, workers: int = 2) -> CodeResult:
  """pass@1 of `generate_fn` on MBPP tasks (e.g. task_ids 11-510, the test split).

  Args:
    generate_fn: maps a batch of prompts to a batch of completions.
    records: the tasks, from `fef_jax.data.text.load_mbpp`.
    batch_size: prompts per `generate_fn` call.
    progress: show a progress bar over generation batches.
    timeout_s, memory_mb: per-program sandbox limits (see `sandbox.run_python`).
    workers: programs run at once.

  Raises:
    ValueError: no records, a record without tests, a bad `generate_fn`
      output, or a bad limit.
  """
  return _evaluate(
      "mbpp", generate_fn, [r.task_id for r in records],
      [mbpp_prompt(r) for r in records],
      lambda i, code: mbpp_program(records[i], code), MBPP_STOP_SEQUENCES,
      batch_size=batch_size, progress=progress, timeout_s=timeout_s,
      memory_mb=memory_mb, workers=workers)


def evaluate_humaneval(generate_fn: metrics.GenerateFn,
                       problems: Sequence[HumanEvalProblem], *, batch_size: int,
                       progress: bool = False, timeout_s: float = 10.0,
                       memory_mb: int = 1024, workers: int = 2) -> CodeResult:
  """pass@1 of `generate_fn` on HumanEval problems (from `load_humaneval`).

  Args and Raises: as `evaluate_mbpp`, with problems instead of records.
  """
  return _evaluate(
      "humaneval", generate_fn, [p.task_id for p in problems],
      [humaneval_prompt(p) for p in problems],
      lambda i, code: humaneval_program(problems[i], code), HUMANEVAL_STOP_SEQUENCES,
      batch_size=batch_size, progress=progress, timeout_s=timeout_s,
      memory_mb=memory_mb, workers=workers)
