"""Tests for fef_jax.eval.code: MBPP on real tasks, HumanEval on hand-written problems."""
import ast
import json
import os
import pathlib

import pytest

from fef_jax.data import text
from fef_jax.eval import code

# The shared test data lies beside the checkout (../shared/data), here and in CI.
DATA_DIR = pathlib.Path(os.environ.get(
    "FEF_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))

# Hand-written problems in the format of openai/human-eval's HumanEval.jsonl
# (there is no HumanEval data in the shared data folder).
HUMANEVAL = [
    {"task_id": "Test/0",
     "prompt": "from typing import List\n\n\ndef has_close_elements(numbers: List[float], "
               "threshold: float) -> bool:\n    \"\"\" Whether any two numbers are closer "
               "than threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n"
               "    >>> has_close_elements([1.0, 2.8, 3.0], 0.3)\n    True\n    \"\"\"\n",
     "canonical_solution": "    for i, a in enumerate(numbers):\n        for j, b in "
                           "enumerate(numbers):\n            if i != j and abs(a - b) < "
                           "threshold:\n                return True\n    return False\n",
     "test": "\n\nMETADATA = {'author': 'test'}\n\n\ndef check(candidate):\n"
             "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
             "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
             "    assert candidate([], 1.0) == False\n",
     "entry_point": "has_close_elements"},
    {"task_id": "Test/1",
     "prompt": "\ndef count_vowels(s: str) -> int:\n    \"\"\" The number of vowels (a, e, i, "
               "o, u, either case) in s.\n    >>> count_vowels('Hello')\n    2\n    \"\"\"\n",
     "canonical_solution": "    return sum(c in 'aeiouAEIOU' for c in s)\n",
     "test": "\n\ndef check(candidate):\n    assert candidate('Hello') == 2\n"
             "    assert candidate('') == 0\n    assert candidate('AEIOUxyz') == 5\n",
     "entry_point": "count_vowels"},
    {"task_id": "Test/2",
     "prompt": "from typing import List\n\n\ndef running_max(xs: List[int]) -> List[int]:\n"
               "    \"\"\" The maximum of each prefix of xs.\n    >>> running_max([1, 3, 2])\n"
               "    [1, 3, 3]\n    \"\"\"\n",
     "canonical_solution": "    out = []\n    for x in xs:\n        out.append(x if not out "
                           "else max(out[-1], x))\n    return out\n",
     "test": "\n\ndef check(candidate):\n    assert candidate([1, 3, 2]) == [1, 3, 3]\n"
             "    assert candidate([]) == []\n    assert candidate([-1, -5, 0]) == [-1, -1, 0]\n",
     "entry_point": "running_max"},
    {"task_id": "Test/3",
     "prompt": "\n\ndef fib(n: int) -> int:\n    \"\"\" The n-th Fibonacci number.\n"
               "    >>> fib(10)\n    55\n    \"\"\"\n",
     "canonical_solution": "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
                           "    return a\n",
     "test": "\n\ndef check(candidate):\n    assert candidate(10) == 55\n"
             "    assert candidate(1) == 1\n    assert candidate(0) == 0\n",
     "entry_point": "fib"},
]


@pytest.fixture(scope="module")
def mbpp_subset():
  """42 MBPP test-split tasks, evenly spread over task_ids 11-510, with 367 (setup code)."""
  records = [r for r in text.load_mbpp(DATA_DIR / "mbpp" / "mbpp.jsonl")
             if 11 <= r.task_id <= 510]
  return records[::12] + [r for r in records if r.task_id == 367]


@pytest.fixture
def humaneval_file(tmp_path):
  path = tmp_path / "HumanEval.jsonl"
  path.write_text("".join(json.dumps(problem) + "\n" for problem in HUMANEVAL))
  return path


def _oracle(prompts_to_answers):
  return lambda prompts: [prompts_to_answers[p] for p in prompts]


def _return_none_bodies(solution):
  """`solution` with every function body replaced by `return None`."""
  tree = ast.parse(solution)
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      node.body = [ast.Return(ast.Constant(None))]
  return ast.unparse(tree)


def test_mbpp_prompt_format(mbpp_subset):
  record = mbpp_subset[0]
  assert code.mbpp_prompt(record) == f'"""\n{record.text}\n{record.test_list[0]}\n"""\n'


def test_mbpp_canonical_solutions_pass_and_wrong_ones_fail(mbpp_subset):
  # On all 500 test-split tasks every canonical solution passes on Python 3.11,
  # task 367 included now that its setup code runs after the solution.
  prompts = {code.mbpp_prompt(r): r.code for r in mbpp_subset}
  right = code.evaluate_mbpp(_oracle(prompts), mbpp_subset, batch_size=8, timeout_s=20.0)
  failed = [(item.task_id, item.reason) for item in right.items if not item.passed]
  assert failed == []
  assert right.pass_at_1.value == 1.0 and right.pass_at_1.n == len(mbpp_subset)

  wrong = {code.mbpp_prompt(r): _return_none_bodies(r.code) for r in mbpp_subset}
  result = code.evaluate_mbpp(_oracle(wrong), mbpp_subset, batch_size=8, timeout_s=20.0)
  passed = [item.task_id for item in result.items if item.passed]
  assert passed == []
  assert result.pass_at_1.value == 0.0 and result.pass_at_1.high < 0.1
  assert all(item.status == "failed" for item in result.items)


def test_load_humaneval(humaneval_file):
  problems = code.load_humaneval(humaneval_file)
  assert [p.task_id for p in problems] == ["Test/0", "Test/1", "Test/2", "Test/3"]
  assert problems[3] == code.HumanEvalProblem(**HUMANEVAL[3])


@pytest.mark.parametrize("line,match", [
    ("{not json", r"HumanEval.jsonl:2: invalid JSON"),
    ("[1, 2]", r"HumanEval.jsonl:2: expected a JSON object"),
    (json.dumps({k: v for k, v in HUMANEVAL[0].items() if k != "test"}),
     r"HumanEval.jsonl:2: missing key\(s\) \['test'\]"),
    (json.dumps({**HUMANEVAL[0], "entry_point": 3}),
     r"HumanEval.jsonl:2: key 'entry_point' must be str"),
])
def test_load_humaneval_errors_name_the_line(tmp_path, line, match):
  path = tmp_path / "HumanEval.jsonl"
  path.write_text(json.dumps(HUMANEVAL[0]) + "\n" + line + "\n")
  with pytest.raises(ValueError, match=match):
    code.load_humaneval(path)
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    code.load_humaneval(tmp_path / "missing.jsonl")


def test_postprocess_fences_and_stop_sequences():
  stops = code.HUMANEVAL_STOP_SEQUENCES
  body = "    return x + 1\n"
  assert code.postprocess(body, stops) == body
  assert code.postprocess(body + "\n\ndef unrelated():\n    pass\n", stops) == body + "\n"
  for tail in ("\nif __name__ == '__main__':\n    main()", "\nprint(f(1))", "\nclass A:\n  pass",
               "\n# tests\nassert f(1) == 2"):
    assert code.postprocess(body + tail, stops) == body
  # Only top-level code stops: nested defs and prints are part of the body.
  nested = "    def helper(y):\n        print(y)\n        return y\n    return helper(x)\n"
  assert code.postprocess(nested, stops) == nested
  fenced = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nIt adds one.\n"
  assert code.postprocess(fenced, stops) == "def f(x):\n    return x + 1\n"
  assert code.postprocess("```\nx = 1\n", stops) == "x = 1\n"  # unclosed fence
  mbpp = "def f(x):\n    return x\nassert f(1) == 1\nprint(f(2))"
  assert code.postprocess(mbpp, code.MBPP_STOP_SEQUENCES) == "def f(x):\n    return x"


def test_humaneval_canonical_passes_wrong_fails(humaneval_file):
  problems = code.load_humaneval(humaneval_file)
  right = code.evaluate_humaneval(
      _oracle({p.prompt: p.canonical_solution for p in problems}), problems, batch_size=3)
  assert [item.passed for item in right.items] == [True] * 4
  assert right.pass_at_1.value == 1.0

  wrong = code.evaluate_humaneval(lambda prompts: ["    return None\n"] * len(prompts),
                                  problems, batch_size=4)
  assert [item.status for item in wrong.items] == ["failed"] * 4
  assert all("AssertionError" in item.reason for item in wrong.items)
  assert wrong.pass_at_1.value == 0.0

  # A chat-style answer: the whole function in a fence, then prose and stray code.
  fenced = {p.prompt: f"```python\n{p.prompt}{p.canonical_solution}```\nprint('done')\n"
            for p in problems}
  assert code.evaluate_humaneval(_oracle(fenced), problems, batch_size=4).pass_at_1.value == 1.0


def test_humaneval_malicious_completion_fails_and_harms_nothing(humaneval_file, tmp_path):
  problems = code.load_humaneval(humaneval_file)
  victim = tmp_path / "victim"
  victim.mkdir()
  (victim / "data.txt").write_text("precious")
  victim.chmod(0o777)
  attacks = [
      f"    import os\n    os.system('rm -rf {victim}')\n",
      f"    import shutil\n    shutil.rmtree({str(victim)!r})\n",
      "    import os\n    os.system('rm -rf ~')\n",
      f"    open({str(victim / 'data.txt')!r}, 'w').write('pwned')\n",
  ]
  # Each attack comes before a correct body, so only the sandbox can make it fail.
  completions = {p.prompt: attack + p.canonical_solution for p, attack in zip(problems, attacks)}
  result = code.evaluate_humaneval(_oracle(completions), problems, batch_size=4)
  assert [item.status for item in result.items] == ["failed"] * 4
  assert all("PermissionError" in item.reason for item in result.items)
  assert (victim / "data.txt").read_text() == "precious"


def test_results_are_json_serialisable(humaneval_file):
  problems = code.load_humaneval(humaneval_file)
  result = code.evaluate_humaneval(lambda prompts: ["    while True: pass\n"] * len(prompts),
                                   problems[:2], batch_size=2, timeout_s=1.0)
  data = json.loads(json.dumps(result.to_json()))
  assert data["benchmark"] == "humaneval" and data["pass_at_1"]["n"] == 2
  assert [item["status"] for item in data["items"]] == ["timeout", "timeout"]
  assert data["items"][0]["task_id"] == "Test/0"


def test_bad_arguments(mbpp_subset, humaneval_file):
  with pytest.raises(ValueError, match="at least one problem"):
    code.evaluate_humaneval(lambda p: p, [], batch_size=1)
  with pytest.raises(ValueError, match="timeout_s"):
    code.evaluate_mbpp(lambda p: p, mbpp_subset[:1], batch_size=1, timeout_s=0)
  with pytest.raises(ValueError, match="one string per prompt"):
    code.evaluate_humaneval(lambda p: [], code.load_humaneval(humaneval_file), batch_size=2)
  no_tests = text.MbppRecord(task_id=1, text="t", code="pass", test_list=())
  with pytest.raises(ValueError, match="task 1 has no tests"):
    code.mbpp_prompt(no_tests)
