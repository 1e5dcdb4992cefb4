"""Tests for fef_jax.eval.gsm8k on the real GSM8K files."""
import json
import os
import pathlib

import pytest

from fef_jax.data import text
from fef_jax.eval import gsm8k

# The shared test data lies beside the checkout (../shared/data), here and in CI.
DATA_DIR = pathlib.Path(os.environ.get(
    "FEF_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def test_split():
  return text.load_gsm8k(DATA_DIR / "gsm8k" / "test.jsonl")


@pytest.fixture(scope="module")
def train_split():
  return text.load_gsm8k(DATA_DIR / "gsm8k" / "train.jsonl")


def test_extracting_every_reference_solution_gives_its_answer(test_split):
  assert len(test_split) == 1319
  for record in test_split:
    assert gsm8k.extract_answer(record.answer) == gsm8k.normalize_number(
        record.final_answer), record.answer


@pytest.mark.parametrize("completion,expected", [
    ("She pays 3 * $2 = $6.\n#### 6", "6"),
    ("#### 1,450,000", "1450000"),
    ("####  -10 ", "-10"),
    ("#### $18.00.", "18"),
    ("#### +7", "7"),
    ("#### 2.50", "2.5"),
    ("#### 0.0", "0"),
    ("#### -0", "0"),
    ("#### 007", "7"),
    ("#### 5 apples, not 6", "5"),
    ("The total is 12 + 6 = 18.\nThe answer is 18.", "18"),
    ("so 4 people.\nThe answer is: $1,234.5 dollars, which beats 2", "1234.5"),
    ("THE ANSWER IS -3.", "-3"),
    ("First 3 then 4, so he has 7 left.", "7"),
    ("It costs -2.75 now.", "-2.75"),
    ("#### 6 wait, The answer is 7", "6"),  # "####" wins over "The answer is"
    ("The answer is 7 after 3 more steps", "7"),  # "The answer is" wins over the last number
    ("#### 42\n\nQuestion: Tom has 3 apples.\nAnswer: #### 3", "42"),  # stop at "Question:"
    ("12 eggs\n\nQuestion: what about 5?", "12"),
    ("Costs 1,000 plus 2,500.", "2500"),
    ("no numbers here", None),
    ("", None),
    ("####", None),
    ("Question: 5", None),
])
def test_extract_answer_edge_cases(completion, expected):
  assert gsm8k.extract_answer(completion) == expected


def test_normalize_number_and_its_errors():
  assert gsm8k.normalize_number(" $1,234.50 ") == "1234.5"
  assert gsm8k.normalize_number("-$5") == "-5"
  assert gsm8k.normalize_number("100") == "100"
  for bad in ("", "abc", "1,00", "--5", "5.", "1e3"):
    with pytest.raises(ValueError, match="not a number"):
      gsm8k.normalize_number(bad)


def test_prompts_zero_and_few_shot(test_split, train_split):
  question = test_split[0].question
  assert gsm8k.format_prompt(question) == f"Question: {question}\nAnswer:"
  prompt = gsm8k.format_prompt(question, train_split[:2])
  parts = prompt.split("\n\n")
  assert parts[0] == f"Question: {train_split[0].question}\nAnswer: {train_split[0].answer}"
  assert parts[1] == f"Question: {train_split[1].question}\nAnswer: {train_split[1].answer}"
  assert parts[2] == f"Question: {question}\nAnswer:"


def _oracle(records, answer_of):
  """A generate_fn answering each prompt's question with `answer_of(record)`."""
  by_prompt_end = {f"Question: {r.question}\nAnswer:": r for r in records}

  def generate(prompts):
    return [answer_of(by_prompt_end[p[p.rindex("Question: "):]]) for p in prompts]
  return generate


def test_oracle_scores_100_percent_and_wrong_answers_0(test_split, train_split):
  records = test_split
  right = gsm8k.evaluate_gsm8k(_oracle(records, lambda r: " " + r.answer), records,
                               batch_size=64, num_shots=3, shots_from=train_split)
  assert right.accuracy.value == 1.0 and right.accuracy.n == 1319
  assert 0.99 < right.accuracy.low < 1.0 == right.accuracy.high
  assert all(item.correct and item.reason == "" for item in right.items)
  assert right.items[0].prompt.startswith(f"Question: {train_split[0].question}")

  def wrong(record):
    return f"Let me think.\n#### {int(record.final_answer) + 1}"
  bad = gsm8k.evaluate_gsm8k(_oracle(records, wrong), records, batch_size=64)
  assert bad.accuracy.value == 0.0 and bad.accuracy.low == 0.0
  assert {item.reason for item in bad.items} == {"wrong answer"}
  blank = gsm8k.evaluate_gsm8k(lambda prompts: ["I do not know."] * len(prompts),
                               records[:5], batch_size=2)
  assert [item.extracted for item in blank.items] == [None] * 5
  assert {item.reason for item in blank.items} == {"no number found"}


def test_result_is_json_serialisable(test_split):
  records = test_split[:3]
  result = gsm8k.evaluate_gsm8k(_oracle(records, lambda r: r.answer), records, batch_size=2)
  data = json.loads(json.dumps(result.to_json()))
  assert data["benchmark"] == "gsm8k"
  assert data["accuracy"]["value"] == 1.0 and data["accuracy"]["n"] == 3
  assert data["items"][0]["reference"] == records[0].final_answer
  assert [item["completion"] for item in data["items"]] == [r.answer for r in records]


def test_bad_arguments(test_split, train_split):
  def echo(prompts):
    return prompts
  with pytest.raises(ValueError, match="at least one record"):
    gsm8k.evaluate_gsm8k(echo, [], batch_size=1)
  with pytest.raises(ValueError, match="shots_from"):
    gsm8k.evaluate_gsm8k(echo, test_split[:1], batch_size=1, num_shots=2)
  with pytest.raises(ValueError, match="shots_from"):
    gsm8k.evaluate_gsm8k(echo, test_split[:1], batch_size=1, num_shots=3,
                         shots_from=train_split[:2])
  with pytest.raises(ValueError, match="num_shots"):
    gsm8k.evaluate_gsm8k(echo, test_split[:1], batch_size=1, num_shots=-1)
  with pytest.raises(ValueError, match="batch_size"):
    gsm8k.evaluate_gsm8k(echo, test_split[:1], batch_size=0)
  with pytest.raises(ValueError, match="one string per prompt"):
    gsm8k.evaluate_gsm8k(lambda prompts: prompts[:-1], test_split[:3], batch_size=2)
  with pytest.raises(ValueError, match="must be str"):
    gsm8k.evaluate_gsm8k(lambda prompts: [None] * len(prompts), test_split[:3],
                         batch_size=2)
