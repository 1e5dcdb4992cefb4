"""Loaders for the text benchmarks: tiny Shakespeare, GSM8K and MBPP.

Each loader takes the path of one upstream file (see the data README for
their formats) and returns its content whole, in file order. Failures name the
file and, for content errors, the 1-based line:
- `FileNotFoundError`: the path is not a file.
- `ValueError`: invalid UTF-8, invalid JSON, a line that is not a JSON object,
  a missing key or a value of the wrong type, and for GSM8K an answer without
  a final `#### <number>`.
Blank lines in JSONL files are skipped.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclasses.dataclass(frozen=True)
class Gsm8kRecord:
  """One GSM8K problem.

  Attributes:
    question: the problem statement.
    answer: the worked solution, ending with `#### <number>`.
    final_answer: that number without thousands separators, e.g. "1450000"
      for "#### 1,450,000"; `float(final_answer)` always succeeds.
  """
  question: str
  answer: str
  final_answer: str


@dataclasses.dataclass(frozen=True)
class MbppRecord:
  """One MBPP task (`mbpp.jsonl`).

  Attributes:
    task_id: the task's id (1..974 upstream; 11..510 are the test split).
    text: the natural-language problem.
    code: the reference solution (upstream uses "\\r\\n" line endings).
    test_list: assert statements the solution must pass.
    test_setup_code: code to run before the tests ("" when absent).
    challenge_test_list: extra, harder asserts (empty when absent).
  """
  task_id: int
  text: str
  code: str
  test_list: tuple[str, ...]
  test_setup_code: str = ""
  challenge_test_list: tuple[str, ...] = ()


def _read_utf8(path: str | pathlib.Path, what: str) -> tuple[pathlib.Path, str]:
  """(path, its UTF-8 text); `what` names the file kind in errors.

  Raises:
    FileNotFoundError: `path` is not a file.
    ValueError: invalid UTF-8, naming the line.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} file not found: {path}")
  data = path.read_bytes()
  try:
    return path, data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: invalid UTF-8 ({e.reason}).") from e


def _read_jsonl(path: str | pathlib.Path, what: str,
                fields: dict[str, type]) -> list[tuple[pathlib.Path, int, dict]]:
  """(path, line number, object) for each non-blank line of a JSONL file.

  Args:
    path: the file.
    what: the file kind, for error messages.
    fields: required keys and their types; other keys are allowed.

  Raises:
    FileNotFoundError, ValueError: see the module docstring.
  """
  path, content = _read_utf8(path, what)
  rows = []
  for number, line in enumerate(content.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: invalid JSON ({e.msg} at column "
                       f"{e.colno}).") from e
    if not isinstance(row, dict):
      raise ValueError(f"{path}:{number}: expected a JSON object, got "
                       f"{type(row).__name__}.")
    missing = [key for key in fields if key not in row]
    if missing:
      raise ValueError(f"{path}:{number}: missing key(s) {missing}; "
                       f"{what} lines need {sorted(fields)}.")
    for key, kind in fields.items():
      if not isinstance(row[key], kind) or isinstance(row[key], bool):
        raise ValueError(f"{path}:{number}: key {key!r} must be "
                         f"{kind.__name__}, got {type(row[key]).__name__}.")
    rows.append((path, number, row))
  return rows


def load_text(path: str | pathlib.Path) -> str:
  """The whole UTF-8 text file (e.g. tiny Shakespeare's `input.txt`).

  Raises:
    FileNotFoundError: `path` is not a file.
    ValueError: invalid UTF-8, naming the line.
  """
  return _read_utf8(path, "text")[1]


def extract_final_answer(solution: str) -> str | None:
  """The number after the last `####` of a GSM8K-style solution, or None.

  Thousands separators are removed ("1,450,000" -> "1450000"). None when there
  is no `####` or what follows it (stripped) is not an optionally negative
  integer or decimal.
  """
  _, marker, tail = solution.rpartition("####")
  if not marker:
    return None
  number = tail.strip().replace(",", "")
  return number if _NUMBER.fullmatch(number) else None


def load_gsm8k(path: str | pathlib.Path) -> list[Gsm8kRecord]:
  """GSM8K problems from a JSONL file with keys `question` and `answer`.

  Raises:
    FileNotFoundError, ValueError: see the module docstring; also when an
      answer has no final `#### <number>`.
  """
  records = []
  for path, number, row in _read_jsonl(path, "GSM8K",
                                       {"question": str, "answer": str}):
    final_answer = extract_final_answer(row["answer"])
    if final_answer is None:
      raise ValueError(f"{path}:{number}: answer does not end with "
                       f"'#### <number>': ...{row['answer'][-40:]!r}.")
    records.append(Gsm8kRecord(row["question"], row["answer"], final_answer))
  return records


def load_mbpp(path: str | pathlib.Path) -> list[MbppRecord]:
  """MBPP tasks from `mbpp.jsonl`.

  Lines need `text`, `code`, `task_id` and `test_list`; `test_setup_code` and
  `challenge_test_list` are optional. Other keys are ignored.

  Raises:
    FileNotFoundError, ValueError: see the module docstring.
  """
  records = []
  for _, _, row in _read_jsonl(path, "MBPP", {"text": str, "code": str,
                                              "task_id": int, "test_list": list}):
    records.append(MbppRecord(
        task_id=row["task_id"], text=row["text"], code=row["code"],
        test_list=tuple(row["test_list"]),
        test_setup_code=row.get("test_setup_code") or "",
        challenge_test_list=tuple(row.get("challenge_test_list") or ())))
  return records
