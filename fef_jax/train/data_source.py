"""Training data from a config: synthetic constraint tasks, a text corpus, or GSM8K/MBPP.

Returns the arrays a `BatchIterator` serves (`tokens`, `valid`, `maskable`),
the vocabulary size and mask id, a fingerprint of the data's vocabulary (saved in
checkpoints), for tasks the task object (to sample prompts and check answers),
and for text data the tokenizer.

Kinds (`config.kind`):
- `task`: a synthetic task (`config.task`, `config.task_kwargs`); only answers
  are maskable.
- `text`: a plain-text corpus at `config.path`, packed into rows of
  `config.length` tokens; every token maskable.
- `gsm8k_text`: the GSM8K JSONL file at `config.path` as a text corpus: each
  problem's question and worked solution, in the layout the harness prompts
  with, one document each (EOS after each), packed like `text`.
- `gsm8k` / `mbpp`: prompt-conditioned (SFT-style) pairs from the JSONL file at
  `config.path`: the prompt (as `fef_jax.eval.gsm8k.format_prompt` /
  `fef_jax.eval.code.mbpp_prompt` write it) is never masked, the answer
  (GSM8K's worked solution, MBPP's code) plus EOS is; padding fills each row
  to `config.length`, and pairs that do not fit are dropped (counted in
  `DataSource.dropped`).

Text kinds take `config.tokenizer`: `byte`, or `bpe` trained on the training
text with at most `config.bpe_vocab_size` ids. With a `tokenizer_dir` the
tokenizer is saved there on first use and loaded from there afterwards, so a
resumed run encodes exactly as before.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import ml_collections
import numpy as np

from fef_jax.data import pipeline
from fef_jax.data import synthetic
from fef_jax.data import text
from fef_jax.data import tokenizers
from fef_jax.eval import code
from fef_jax.eval import gsm8k

TASKS = {"pair_sum": synthetic.PairSum, "permutation": synthetic.Permutation,
         "copy": synthetic.Copy, "phrases": synthetic.Phrases}


@dataclasses.dataclass
class DataSource:
  """Arrays to train and evaluate on, and what the model needs to know about them."""
  arrays: dict[str, np.ndarray]
  eval_arrays: dict[str, np.ndarray]
  vocab_size: int
  mask_id: int
  fingerprint: str
  task: Optional[synthetic.Task] = None
  tokenizer: Optional[tokenizers.Tokenizer] = None
  dropped: int = 0


def _task(config: ml_collections.ConfigDict) -> synthetic.Task:
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; expected one of {sorted(TASKS)}")
  return TASKS[config.task](**dict(config.get("task_kwargs", {})))


def task_arrays(task: synthetic.Task, num_examples: int, seed: int) -> dict[str, np.ndarray]:
  """`num_examples` prompt+answer rows; only answers are maskable (prompt-conditioned)."""
  prompts, answers = task.sample(np.random.default_rng(seed), num_examples)
  length = prompts.shape[1] + answers.shape[1]
  return pipeline.pad(zip(prompts, answers), length, task.pad_id)


def _sft_pairs(kind: str, path: str) -> list[tuple[str, str]]:
  """(prompt, answer) texts in the layout the benchmark harnesses prompt with."""
  if kind == "gsm8k":
    return [(gsm8k.format_prompt(r.question), " " + r.answer) for r in text.load_gsm8k(path)]
  return [(code.mbpp_prompt(r), r.code.replace("\r\n", "\n")) for r in text.load_mbpp(path)]


def make_tokenizer(config: ml_collections.ConfigDict, texts: list[str],
                   tokenizer_dir: Optional[str]) -> tokenizers.Tokenizer:
  """The run's tokenizer: loaded from `tokenizer_dir` if saved there, else built
  (`byte`, or `bpe` trained on `texts`) and saved there.

  Raises:
    ValueError: an unknown `config.tokenizer`, or a saved tokenizer of another
      kind than the config asks for.
  """
  kind = config.get("tokenizer", "byte")
  if kind not in ("byte", "bpe"):
    raise ValueError(f"unknown tokenizer {kind!r}; expected 'byte' or 'bpe'")
  if tokenizer_dir is not None and (pathlib.Path(tokenizer_dir) / tokenizers.FILENAME).is_file():
    saved = tokenizers.load(tokenizer_dir)
    if saved.kind != kind:
      raise ValueError(f"{tokenizer_dir} holds a {saved.kind!r} tokenizer but the config "
                       f"asks for {kind!r}")
    return saved
  if kind == "byte":
    tokenizer = tokenizers.ByteTokenizer()
  else:
    tokenizer = tokenizers.BpeTokenizer.train(texts, config.get("bpe_vocab_size", 1024))
  if tokenizer_dir is not None:
    tokenizer.save(tokenizer_dir)
  return tokenizer


def _split(num: int, eval_fraction: float) -> int:
  """Rows held out for evaluation: the last `eval_fraction`, at least one."""
  if not 0 < eval_fraction < 1:
    raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
  if num < 2:
    raise ValueError(f"{num} rows of data: need at least 2 to hold some out")
  return min(num - 1, max(1, int(num * eval_fraction)))


def _sft_source(config: ml_collections.ConfigDict, tokenizer_dir: Optional[str]) -> DataSource:
  pairs = _sft_pairs(config.kind, config.path)
  tokenizer = make_tokenizer(config, [p + a for p, a in pairs], tokenizer_dir)
  encoded = [(tokenizer.encode(p), tokenizer.encode(a) + [tokenizer.eos_id]) for p, a in pairs]
  fitting = [pair for pair in encoded if len(pair[0]) + len(pair[1]) <= config.length]
  if not fitting:
    raise ValueError(f"no {config.kind} example fits in length={config.length} tokens")
  arrays = pipeline.pad(fitting, config.length, tokenizer.pad_id)
  num_eval = _split(len(fitting), config.eval_fraction)
  return DataSource({k: v[:-num_eval] for k, v in arrays.items()},
                    {k: v[-num_eval:] for k, v in arrays.items()},
                    tokenizer.vocab_size, tokenizer.mask_id,
                    f"{config.kind}:tokenizer={tokenizer.fingerprint()}", tokenizer=tokenizer,
                    dropped=len(encoded) - len(fitting))


def _packed_source(config: ml_collections.ConfigDict, documents: list[str],
                   tokenizer_dir: Optional[str]) -> DataSource:
  """Documents packed into rows of `config.length` tokens (EOS after each); every token
  maskable; the last `eval_fraction` of the rows held out."""
  tokenizer = make_tokenizer(config, documents, tokenizer_dir)
  tokens = pipeline.pack([tokenizer.encode(d) for d in documents], config.length,
                         tokenizer.eos_id)
  num_eval = _split(len(tokens), config.eval_fraction)  # the end of the corpus

  def rows(t):
    return {"tokens": t, "valid": np.ones(t.shape, bool), "maskable": np.ones(t.shape, bool)}
  # The kind leads the fingerprint: "text:..." as before gsm8k_text existed, so old runs resume.
  return DataSource(rows(tokens[:-num_eval]), rows(tokens[-num_eval:]),
                    tokenizer.vocab_size, tokenizer.mask_id,
                    f"{config.kind}:tokenizer={tokenizer.fingerprint()}", tokenizer=tokenizer)


def build(config: ml_collections.ConfigDict, seed: int,
          tokenizer_dir: Optional[str] = None) -> DataSource:
  """The data named by `config` (see the module docstring for the kinds).

  Args:
    config: the `data` section of a training config.
    seed: seeds synthetic data.
    tokenizer_dir: where text kinds save / find their tokenizer (None: not saved).

  Raises:
    ValueError: unknown kind, task or tokenizer; malformed data files (path and
      line named); nothing that fits `length`. FileNotFoundError: a missing file.
  """
  if config.kind == "task":
    task = _task(config)
    # Held-out examples come from another seed (duplicates of training rows are
    # possible for small tasks; they are fresh draws, not a disjoint split).
    return DataSource(task_arrays(task, config.num_examples, seed),
                      task_arrays(task, config.num_eval_examples, seed + 1),
                      task.vocab_size, task.mask_id,
                      f"task={config.task}:{sorted(dict(config.get('task_kwargs', {})).items())}"
                      f":V={task.vocab_size}", task)
  if config.kind == "text":
    return _packed_source(config, [text.load_text(config.path)], tokenizer_dir)
  if config.kind == "gsm8k_text":
    return _packed_source(config, [p + a for p, a in _sft_pairs("gsm8k", config.path)],
                          tokenizer_dir)
  if config.kind in ("gsm8k", "mbpp"):
    return _sft_source(config, tokenizer_dir)
  raise ValueError(f"unknown data kind {config.kind!r}; expected one of "
                   f"'task', 'text', 'gsm8k_text', 'gsm8k', 'mbpp'")


def describe(source: DataSource) -> dict[str, Any]:
  """A JSON-able summary for logs."""
  return {"examples": int(source.arrays["tokens"].shape[0]),
          "eval_examples": int(source.eval_arrays["tokens"].shape[0]),
          "length": int(source.arrays["tokens"].shape[1]), "dropped": source.dropped,
          "vocab_size": source.vocab_size, "fingerprint": source.fingerprint}
