"""GSM8K evaluation: prompts, answer extraction and exact-match accuracy.

Prompts follow the lm-evaluation-harness format: "Question: <question>\\nAnswer:",
preceded for k-shot prompts by k solved examples ("Question: ...\\nAnswer:
<solution>") separated by blank lines. A completion is cut at the first
"Question:" (the model starting a new example), and its answer is extracted
as, in order of preference:
1. the first number after the first "####" (the format of the solutions);
2. the first number after the first "The answer is" (any case);
3. the last number in the completion.
Numbers are normalised before they are compared: "$", thousands separators
and a leading "+" are dropped and trailing decimal zeros are removed, so
"$1,450,000.00" and "1450000" match.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from fef_jax.data.text import Gsm8kRecord
from fef_jax.eval import metrics

STOP_SEQUENCES = ("Question:",)
# An optionally signed number, optionally with "$", thousands separators
# ("1,000" but not "1,00") and a decimal part; the sign may precede the "$".
_NUMBER = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_HASHES = re.compile("####")
_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Gsm8kItem:
  """One graded problem.

  Attributes:
    prompt: the prompt given to the model.
    completion: the model's completion, as generated.
    extracted: the normalised answer found in it, None if there is no number.
    reference: the normalised reference answer.
    correct: `extracted == reference`.
    reason: "" when correct, else "no number found" or "wrong answer".
  """
  prompt: str
  completion: str
  extracted: str | None
  reference: str
  correct: bool
  reason: str


@dataclasses.dataclass(frozen=True)
class Gsm8kResult:
  """Exact-match accuracy over GSM8K problems.

  Attributes:
    items: one `Gsm8kItem` per problem, in input order.
    accuracy: the fraction correct with its 95% Wilson interval.
    num_shots: solved examples in each prompt.
  """
  items: tuple[Gsm8kItem, ...]
  accuracy: metrics.Estimate
  num_shots: int

  def to_json(self) -> dict[str, object]:
    """The summary and every item as a JSON-serialisable dict."""
    return {"benchmark": "gsm8k", "num_shots": self.num_shots,
            "accuracy": self.accuracy.to_json(),
            "items": [dataclasses.asdict(item) for item in self.items]}


def normalize_number(text: str) -> str:
  """A number in canonical form: "$1,234.50" -> "1234.5", "+7.00" -> "7", "-0" -> "0".

  Raises:
    ValueError: `text` (stripped) is not a number in the format `_NUMBER` accepts.
  """
  stripped = text.strip()
  if not _NUMBER.fullmatch(stripped):
    raise ValueError(f"not a number: {text!r}.")
  number = stripped.replace("$", "").replace(",", "").lstrip("+")
  sign, number = ("-", number[1:]) if number.startswith("-") else ("", number)
  whole, _, fraction = number.partition(".")
  canonical = (whole.lstrip("0") or "0") + ("." + fraction.rstrip("0")).rstrip(".")
  return canonical if canonical == "0" else sign + canonical


def extract_answer(completion: str) -> str | None:
  """The normalised answer of a completion (see the module docstring), or None.

  The completion is first cut at the first stop sequence ("Question:").
  None when it contains no number. On a reference solution this gives its
  `Gsm8kRecord.final_answer` (as found by `fef_jax.data.text.extract_final_answer`),
  normalised.
  """
  text = truncate(completion)
  for marker in (_HASHES, _ANSWER_IS):
    found = marker.search(text)
    match = _NUMBER.search(text, found.end()) if found else None
    if match:
      return normalize_number(match.group())
  numbers = _NUMBER.findall(text)
  return normalize_number(numbers[-1]) if numbers else None


def truncate(completion: str) -> str:
  """`completion` up to the first of `STOP_SEQUENCES`, if any."""
  cut = min((i for i in map(completion.find, STOP_SEQUENCES) if i >= 0),
            default=len(completion))
  return completion[:cut]


def format_example(record: Gsm8kRecord) -> str:
  """A solved example for few-shot prompts: "Question: ...\\nAnswer: <solution>"."""
  return f"Question: {record.question}\nAnswer: {record.answer}"


def format_prompt(question: str, shots: Sequence[Gsm8kRecord] = ()) -> str:
  """The prompt for `question`, after the solved examples `shots` if any."""
  return "".join(format_example(shot) + "\n\n" for shot in shots) + (
      f"Question: {question}\nAnswer:")


def grade(prompt: str, completion: str, record: Gsm8kRecord) -> Gsm8kItem:
  """The graded `Gsm8kItem` for `completion`, the answer to `record`."""
  extracted = extract_answer(completion)
  reference = normalize_number(record.final_answer)
  correct = extracted == reference
  reason = "" if correct else "no number found" if extracted is None else "wrong answer"
  return Gsm8kItem(prompt, completion, extracted, reference, correct, reason)


def evaluate_gsm8k(generate_fn: metrics.GenerateFn, records: Sequence[Gsm8kRecord], *,
                   batch_size: int, num_shots: int = 0,
                   shots_from: Sequence[Gsm8kRecord] | None = None,
                   progress: bool = False) -> Gsm8kResult:
  """Exact-match accuracy of `generate_fn` on GSM8K problems.

  Args:
    generate_fn: maps a batch of prompts to a batch of completions.
    records: the problems, e.g. `load_gsm8k(".../gsm8k/test.jsonl")`.
    batch_size: prompts per `generate_fn` call.
    num_shots: solved examples before each question: the first `num_shots`
      records of `shots_from` (the same for every question).
    shots_from: where examples come from, e.g. the training split.
    progress: show a progress bar over batches.

  Returns:
    The `Gsm8kResult`.

  Raises:
    ValueError: no records, num_shots < 0, num_shots > 0 without enough
      `shots_from` records, or a bad `generate_fn` output (see
      `metrics.generate_batched`).
  """
  if not records:
    raise ValueError("evaluate_gsm8k needs at least one record.")
  if isinstance(num_shots, bool) or not isinstance(num_shots, int) or num_shots < 0:
    raise ValueError(f"num_shots must be an integer >= 0, got {num_shots!r}.")
  available = len(shots_from) if shots_from is not None else 0
  if num_shots > available:
    raise ValueError(f"num_shots={num_shots} needs that many shots_from records, "
                     f"got {available}.")
  shots = list(shots_from[:num_shots]) if num_shots else []
  prompts = [format_prompt(record.question, shots) for record in records]
  completions = metrics.generate_batched(generate_fn, prompts, batch_size=batch_size,
                                         progress=progress, desc="gsm8k")
  items = tuple(grade(prompt, completion, record)
                for prompt, completion, record in zip(prompts, completions, records))
  accuracy = metrics.proportion(sum(item.correct for item in items), len(items))
  return Gsm8kResult(items, accuracy, num_shots)
