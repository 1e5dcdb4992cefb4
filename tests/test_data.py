"""Tests for fef_jax.data: tokenizers, loaders, synthetic tasks, pipeline."""
import json
import os
import pathlib

import numpy as np
import pytest

from fef_jax.data import pipeline
from fef_jax.data import synthetic
from fef_jax.data import text
from fef_jax.data import tokenizers

# The shared test data lies beside the checkout (../shared/data), here and in CI.
DATA_DIR = pathlib.Path(os.environ.get(
    "FEF_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
SHAKESPEARE = DATA_DIR / "tinyshakespeare" / "input.txt"
GSM8K_TEST = DATA_DIR / "gsm8k" / "test.jsonl"
MBPP = DATA_DIR / "mbpp" / "mbpp.jsonl"
NON_ASCII = "héllo wörld — ñandú 日本語 🙂\n\ttabs  and  spaces\r\n"

# ---------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trip_and_ids():
  tok = tokenizers.ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.mask_id) == (258, 256,
                                                                    257, 258)
  for s in ["", "plain ascii", NON_ASCII]:
    ids = tok.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == s
  assert len(tok.encode("é")) == 2  # UTF-8 bytes, not code points.
  assert tok.decode(tok.encode("ab") + [tok.eos_id, tok.pad_id]) == "ab"
  assert tok.decode([0xff]) == "\ufffd"  # Invalid UTF-8 is replaced.
  with pytest.raises(ValueError, match="position 1"):
    tok.decode([65, tok.mask_id])


def test_byte_tokenizer_save_load(tmp_path):
  tok = tokenizers.ByteTokenizer()
  tok.save(tmp_path)
  loaded = tokenizers.load(tmp_path, expected_fingerprint=tok.fingerprint())
  assert isinstance(loaded, tokenizers.ByteTokenizer)
  assert loaded.fingerprint() == tok.fingerprint()


@pytest.fixture(scope="module")
def shakespeare():
  return text.load_text(SHAKESPEARE)


@pytest.fixture(scope="module")
def bpe(shakespeare):
  return tokenizers.BpeTokenizer.train(shakespeare[:100_000].splitlines(True),
                                       vocab_size=400)


def test_bpe_round_trip_and_compression(bpe, shakespeare):
  assert bpe.vocab_size == 400
  assert (bpe.pad_id, bpe.eos_id, bpe.mask_id) == (0, 1, 400)
  held_out = shakespeare[-5000:]
  for s in [held_out, NON_ASCII, ""]:
    ids = bpe.encode(s)
    assert all(2 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == s
  assert len(bpe.encode(held_out)) < 0.7 * len(held_out.encode())
  literal = bpe.encode("<eos><pad>")
  assert bpe.eos_id not in literal and bpe.pad_id not in literal
  assert bpe.decode(bpe.encode("to be") + [bpe.eos_id, bpe.pad_id]) == "to be"
  with pytest.raises(ValueError, match="outside"):
    bpe.decode([bpe.mask_id])


def test_bpe_save_load_and_fingerprint(bpe, shakespeare, tmp_path):
  path = bpe.save(tmp_path / "run" / "tokenizer")
  assert path.is_file()
  loaded = tokenizers.load(path.parent, expected_fingerprint=bpe.fingerprint())
  assert isinstance(loaded, tokenizers.BpeTokenizer)
  assert loaded.fingerprint() == bpe.fingerprint()
  sample = shakespeare[:3000] + NON_ASCII
  assert loaded.encode(sample) == bpe.encode(sample)
  assert loaded.decode(loaded.encode(sample)) == sample
  assert bpe.fingerprint().startswith("bpe-V400-pad0-eos1-")
  retrained = tokenizers.BpeTokenizer.train(
      shakespeare[:100_000].splitlines(True), vocab_size=400)
  assert retrained.fingerprint() == bpe.fingerprint()  # Deterministic.

  smaller = tokenizers.BpeTokenizer.train(
      shakespeare[:100_000].splitlines(True), vocab_size=380)
  other_corpus = tokenizers.BpeTokenizer.train(
      shakespeare[-100_000:].splitlines(True), vocab_size=400)
  fingerprints = {bpe.fingerprint(), smaller.fingerprint(),
                  other_corpus.fingerprint(),
                  tokenizers.ByteTokenizer().fingerprint()}
  assert len(fingerprints) == 4
  with pytest.raises(ValueError, match="not the expected"):
    tokenizers.load(path.parent, expected_fingerprint=smaller.fingerprint())


def test_tokenizer_load_errors(bpe, tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
    tokenizers.load(tmp_path / "absent")
  path = bpe.save(tmp_path / "tok")
  record = json.loads(path.read_text())

  def write_and_load(new_record):
    path.write_text(json.dumps(new_record))
    return tokenizers.load(path.parent)

  with pytest.raises(ValueError, match="saved vocab_size 500"):
    write_and_load({**record, "vocab_size": 500})
  with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
    write_and_load({**record, "kind": "wordpiece"})
  with pytest.raises(ValueError, match="saved fingerprint"):
    write_and_load({**record, "fingerprint": "bpe-V400-pad0-eos1-0"})
  with pytest.raises(ValueError, match="cannot rebuild"):
    write_and_load({**record, "payload": {}})
  path.write_text("{\n\"format\": ,\n}")
  with pytest.raises(ValueError, match=f"{path}:2: invalid JSON"):
    tokenizers.load(path.parent)


def test_bpe_rejects_too_small_vocab():
  with pytest.raises(ValueError, match=">= 258"):
    tokenizers.BpeTokenizer.train(["abc"], vocab_size=100)


# ------------------------------------------------------------------- loaders


def test_load_text(shakespeare):
  assert len(shakespeare) == 1_115_394
  assert shakespeare.startswith("First Citizen:\nBefore we proceed")


def test_load_gsm8k_test_split():
  records = text.load_gsm8k(GSM8K_TEST)
  assert len(records) == 1319
  for record in records:
    float(record.final_answer)
  first = records[0]
  assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
  assert first.final_answer == "18"
  assert records[1].question.startswith("A robe takes 2 bolts")
  assert records[1].final_answer == "3"
  with_commas = [r for r in records if "," in r.answer.rpartition("####")[2]]
  assert with_commas and all("," not in r.final_answer for r in with_commas)


def test_extract_final_answer():
  assert text.extract_final_answer("so 3+4=7\n#### 7") == "7"
  assert text.extract_final_answer("#### 1,450,000 ") == "1450000"
  assert text.extract_final_answer("#### -2.5") == "-2.5"
  assert text.extract_final_answer("#### 12 apples") is None
  assert text.extract_final_answer("no marker 12") is None


def test_load_mbpp():
  records = text.load_mbpp(MBPP)
  assert len(records) == 974
  assert [r.task_id for r in records] == list(range(1, 975))
  task2 = records[1]
  assert task2.code.startswith("def similar_elements(test_tup1, test_tup2):")
  assert len(task2.test_list) == 3 and task2.challenge_test_list == ()
  assert records[10].challenge_test_list  # Task 11 has challenge tests.


def _write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


GOOD_GSM8K = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
GOOD_MBPP = json.dumps({"text": "t", "code": "c", "task_id": 1,
                        "test_list": ["assert True"]})


@pytest.mark.parametrize("loader", [text.load_text, text.load_gsm8k,
                                    text.load_mbpp])
def test_loaders_missing_file(loader, tmp_path):
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    loader(missing)


@pytest.mark.parametrize("loader,good", [(text.load_gsm8k, GOOD_GSM8K),
                                         (text.load_mbpp, GOOD_MBPP)])
def test_jsonl_errors_name_path_and_line(loader, good, tmp_path):
  path = tmp_path / "data.jsonl"
  assert len(loader(_write_lines(path, [good, "", good]))) == 2
  _write_lines(path, [good, '{"question": "x",', good])
  with pytest.raises(ValueError, match=f"{path}:2: invalid JSON"):
    loader(path)
  _write_lines(path, [good, good, '{"answer": "#### 1", "text": "t"}'])
  with pytest.raises(ValueError, match=f"{path}:3: missing key"):
    loader(path)
  _write_lines(path, ["[1, 2]"])
  with pytest.raises(ValueError, match=f"{path}:1: expected a JSON object"):
    loader(path)
  path.write_bytes(good.encode() + b"\n\xff\xfe\n")
  with pytest.raises(ValueError, match=f"{path}:2: invalid UTF-8"):
    loader(path)


def test_jsonl_type_and_answer_errors(tmp_path):
  path = tmp_path / "data.jsonl"
  _write_lines(path, [GOOD_MBPP, json.dumps({**json.loads(GOOD_MBPP),
                                             "task_id": "7"})])
  with pytest.raises(ValueError, match=f"{path}:2: key 'task_id' must be int"):
    text.load_mbpp(path)
  _write_lines(path, [GOOD_GSM8K, json.dumps({"question": "q",
                                              "answer": "no final"})])
  with pytest.raises(ValueError, match=f"{path}:2: answer does not end"):
    text.load_gsm8k(path)


# ----------------------------------------------------------- synthetic tasks

TASKS = [synthetic.PairSum(base=5), synthetic.Permutation(alphabet_size=6,
                                                          length=3),
         synthetic.Copy(alphabet_size=5, length=4), synthetic.Phrases(),
         synthetic.PairSum(base=4, pairs=3)]


def _symbols(*values):
  return np.array([values], np.int32) + synthetic.FIRST_SYMBOL_ID


@pytest.mark.parametrize("task", TASKS, ids=lambda t: type(t).__name__)
def test_generated_examples_are_valid(task):
  prompts, answers = task.sample(np.random.default_rng(0), 2000)
  assert prompts.shape == (2000, task.prompt_length)
  assert answers.shape == (2000, task.answer_length)
  assert prompts.dtype == answers.dtype == np.int32
  assert np.all(prompts[:, -1] == synthetic.SEP_ID)
  assert answers.min() >= synthetic.FIRST_SYMBOL_ID
  assert answers.max() < task.vocab_size == task.mask_id
  assert task.check(prompts, answers).all()
  again = task.sample(np.random.default_rng(0), 2000)
  np.testing.assert_array_equal(again[1], answers)
  # Non-special ids other than the answer's are rejected; so are pad and mask.
  for bad in (synthetic.PAD_ID, synthetic.SEP_ID, task.mask_id):
    corrupted = answers.copy()
    corrupted[:, -1] = bad
    assert not task.check(prompts, corrupted).any()


@pytest.mark.parametrize("task", TASKS[:2] + TASKS[3:],
                         ids=lambda t: type(t).__name__)
def test_independent_sampling_makes_invalid_answers(task):
  """Mixing answer positions across same-prompt examples (a product of exact
  marginals) yields invalid answers: the checkers see factorization error."""
  rng = np.random.default_rng(1)
  prompts, answers = task.sample(rng, 4000)
  order = np.lexsort(prompts.T[::-1])
  prompts, answers = prompts[order], answers[order]
  mixed = answers.copy()
  _, starts = np.unique(prompts, axis=0, return_index=True)
  bounds = list(starts) + [len(prompts)]
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    for column in range(answers.shape[1]):
      mixed[lo:hi, column] = rng.permutation(answers[lo:hi, column])
  valid_rate = task.check(prompts, mixed).mean()
  assert 0.05 < valid_rate < 0.9


def test_pair_sum_checker():
  task = synthetic.PairSum(base=10)
  assert task.vocab_size == 2 + 19
  prompt = np.concatenate([_symbols(9), [[synthetic.SEP_ID]]], axis=1)
  assert task.check(prompt, _symbols(4, 5))[0]
  assert task.check(prompt, _symbols(0, 9))[0]
  assert not task.check(prompt, _symbols(4, 4))[0]
  high = np.concatenate([_symbols(12), [[synthetic.SEP_ID]]], axis=1)
  assert not task.check(high, _symbols(12, 0))[0]  # 12 is not a digit.
  assert task.check(high, _symbols(3, 9))[0]
  with pytest.raises(ValueError, match="expected prompts"):
    task.check(prompt, _symbols(4, 5, 0))
  with pytest.raises(ValueError, match="SEP_ID"):
    task.check(_symbols(9, 9), _symbols(4, 5))


def test_pair_sums_check_every_pair():
  task = synthetic.PairSum(base=10, pairs=3)
  assert (task.prompt_length, task.answer_length) == (4, 6)
  prompt = np.concatenate([_symbols(9, 0, 18), [[synthetic.SEP_ID]]], axis=1)
  assert task.check(prompt, _symbols(4, 5, 0, 0, 9, 9))[0]
  assert not task.check(prompt, _symbols(4, 5, 0, 0, 9, 8))[0]  # the last pair is off
  assert not task.check(prompt, _symbols(5, 4, 9, 9, 0, 0))[0]  # pairs in another order
  with pytest.raises(ValueError, match="pairs"):
    synthetic.PairSum(pairs=0)


def test_pair_sum_prompt_pad_opens_every_prompt_and_is_checked():
  padded = synthetic.PairSum(base=10, pairs=6, prompt_pad=1)
  assert (padded.prompt_length, padded.answer_length) == (8, 12)
  prompts, answers = padded.sample(np.random.default_rng(0), 50)
  assert prompts.shape == (50, 8) and np.all(prompts[:, 0] == synthetic.PAD_ID)
  assert padded.check(prompts, answers).all()
  plain = synthetic.PairSum(base=10, pairs=6)
  # The same draws without the pad: the same targets and answers.
  plain_prompts, plain_answers = plain.sample(np.random.default_rng(0), 50)
  np.testing.assert_array_equal(prompts[:, 1:], plain_prompts)
  np.testing.assert_array_equal(answers, plain_answers)
  shifted = prompts.copy()
  shifted[:, 0] = prompts[:, 1]  # a symbol where the PAD belongs
  with pytest.raises(ValueError, match="1 PAD ids"):
    padded.check(shifted, answers)
  with pytest.raises(ValueError, match="expected prompts"):
    padded.check(plain_prompts, answers)
  with pytest.raises(ValueError, match="prompt_pad"):
    synthetic.PairSum(prompt_pad=-1)


def test_permutation_copy_phrases_checkers():
  sep = [[synthetic.SEP_ID]]
  perm = synthetic.Permutation(alphabet_size=6, length=3)
  prompt = np.concatenate([_symbols(1, 3, 4), sep], axis=1)
  assert perm.check(prompt, _symbols(4, 1, 3))[0]
  assert not perm.check(prompt, _symbols(4, 4, 3))[0]
  assert not perm.check(prompt, _symbols(4, 1, 5))[0]
  copy = synthetic.Copy(alphabet_size=5, length=3)
  prompt = np.concatenate([_symbols(2, 2, 0), sep], axis=1)
  assert copy.check(prompt, _symbols(2, 2, 0))[0]
  assert not copy.check(prompt, _symbols(2, 0, 2))[0]
  phrases = synthetic.Phrases()  # New York = (0, 1), Los Angeles = (2, 3).
  empty = np.array(sep)
  assert phrases.check(empty, _symbols(0, 1))[0]
  assert phrases.check(empty, _symbols(2, 3))[0]
  assert not phrases.check(empty, _symbols(0, 3))[0]  # "New Angeles".
  assert not phrases.check(empty, _symbols(2, 1))[0]  # "Los York".
  weighted = synthetic.Phrases(((0, 1, 2), (3, 4, 5), (0, 4, 2)),
                               probs=(0.5, 0.3, 0.2))
  _, answers = weighted.sample(np.random.default_rng(0), 10_000)
  counts = [np.all(answers == _symbols(*p), axis=1).sum()
            for p in weighted.phrases]
  np.testing.assert_allclose(counts, [5000, 3000, 2000], atol=200)  # ~5 sd.
  with pytest.raises(ValueError, match="distinct"):
    synthetic.Phrases(((0, 1), (0, 1)))
  with pytest.raises(ValueError, match="one length"):
    synthetic.Phrases(((0, 1), (2,)))


# ------------------------------------------------------------------ pipeline


def test_pack():
  rows = pipeline.pack([[1, 2, 3], [4], [5, 6, 7, 8]], length=4, eos_id=0)
  np.testing.assert_array_equal(rows, [[1, 2, 3, 0], [4, 0, 5, 6]])
  assert rows.dtype == np.int32
  with pytest.raises(ValueError, match="cannot pack 3 tokens"):
    pipeline.pack([[1, 2]], length=4, eos_id=0)


def test_pack_tokenized_shakespeare(shakespeare):
  tok = tokenizers.ByteTokenizer()
  lines = shakespeare[:20_000].split("\n\n")
  rows = pipeline.pack((tok.encode(s) for s in lines), 128, tok.eos_id)
  stream = [i for s in lines for i in tok.encode(s) + [tok.eos_id]]
  assert rows.shape == (len(stream) // 128, 128)
  np.testing.assert_array_equal(rows.reshape(-1), stream[:rows.size])


def test_pad():
  batch = pipeline.pad([([7, 8], [9]), ([7], [5, 6, 4])], length=5, pad_id=0)
  np.testing.assert_array_equal(batch["tokens"], [[7, 8, 9, 0, 0],
                                                  [7, 5, 6, 4, 0]])
  np.testing.assert_array_equal(batch["valid"], [[1, 1, 1, 0, 0],
                                                 [1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(batch["maskable"], [[0, 0, 1, 0, 0],
                                                    [0, 1, 1, 1, 0]])
  assert batch["valid"].dtype == batch["maskable"].dtype == bool
  with pytest.raises(ValueError, match="pair 1 has 2 prompt \\+ 4 answer"):
    pipeline.pad([([1], [2]), ([1, 1], [2, 2, 2, 2])], length=5, pad_id=0)
  with pytest.raises(ValueError, match="pair 0 has an empty answer"):
    pipeline.pad([([1], [])], length=5, pad_id=0)


def test_pad_synthetic_task():
  task = synthetic.PairSum()
  prompts, answers = task.sample(np.random.default_rng(0), 16)
  batch = pipeline.pad(zip(prompts, answers), 6, task.pad_id)
  assert batch["tokens"].shape == (16, 6)
  np.testing.assert_array_equal(batch["maskable"].sum(1), 2)
  np.testing.assert_array_equal(batch["tokens"][:, 2:4], answers)
  assert task.check(batch["tokens"][:, :2], batch["tokens"][:, 2:4]).all()


def _arrays(n=10):
  return {"tokens": np.arange(n * 3).reshape(n, 3), "index": np.arange(n)}


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def test_batch_iterator_resume_equals_uninterrupted():
  # 10 examples, batches of 3: 3 batches per epoch, 1 example skipped.
  reference = _take(pipeline.BatchIterator(_arrays(), 3, seed=5), 10)
  for k in range(10):
    first = pipeline.BatchIterator(_arrays(), 3, seed=5)
    _take(first, k)
    state = json.loads(json.dumps(first.state()))
    resumed = pipeline.BatchIterator(_arrays(), 3, seed=5)
    resumed.restore(state)
    for expected, got in zip(reference[k:], _take(resumed, 10 - k)):
      for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_batch_iterator_order():
  batches = _take(pipeline.BatchIterator(_arrays(), 3, seed=5), 6)
  for batch in batches:
    np.testing.assert_array_equal(batch["tokens"][:, 0], 3 * batch["index"])
  epoch0 = np.concatenate([b["index"] for b in batches[:3]])
  epoch1 = np.concatenate([b["index"] for b in batches[3:]])
  assert len(set(epoch0)) == len(set(epoch1)) == 9
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(
      epoch0, pipeline.epoch_order(10, seed=5, epoch=0)[:9])

  def order(seed):
    iterator = pipeline.BatchIterator(_arrays(100), 10, seed=seed)
    return np.concatenate([b["index"] for b in _take(iterator, 10)])

  np.testing.assert_array_equal(order(5), order(5))
  assert not np.array_equal(order(5), order(6))
  plain = pipeline.BatchIterator(_arrays(), 3, seed=5, shuffle=False)
  np.testing.assert_array_equal(
      np.concatenate([b["index"] for b in _take(plain, 4)]),
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2])


def test_batch_iterator_errors():
  iterator = pipeline.BatchIterator(_arrays(), 3, seed=5)
  with pytest.raises(ValueError, match="seed=6"):
    iterator.restore({**iterator.state(), "seed": 6})
  with pytest.raises(ValueError, match="num_examples=11"):
    iterator.restore({**iterator.state(), "num_examples": 11})
  with pytest.raises(ValueError, match="lacks"):
    iterator.restore({"epoch": 0})
  with pytest.raises(ValueError, match="common leading size"):
    pipeline.BatchIterator({"a": np.zeros(3), "b": np.zeros(4)}, 2, seed=0)
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.BatchIterator(_arrays(), 11, seed=0)
