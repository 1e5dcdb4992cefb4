"""Training data from a config: synthetic constraint tasks or a text corpus.

Returns the arrays a `BatchIterator` serves (`tokens`, `valid`, `maskable`),
the vocabulary size and mask id, a fingerprint of the data's vocabulary (saved in
checkpoints), and, for tasks, the task object (to sample prompts and check answers).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import ml_collections
import numpy as np

from fef_jax.data import pipeline
from fef_jax.data import synthetic
from fef_jax.data import text
from fef_jax.data import tokenizers

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


def _task(config: ml_collections.ConfigDict) -> synthetic.Task:
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; expected one of {sorted(TASKS)}")
  return TASKS[config.task](**dict(config.get("task_kwargs", {})))


def task_arrays(task: synthetic.Task, num_examples: int, seed: int) -> dict[str, np.ndarray]:
  """`num_examples` prompt+answer rows; only answers are maskable (prompt-conditioned)."""
  prompts, answers = task.sample(np.random.default_rng(seed), num_examples)
  length = prompts.shape[1] + answers.shape[1]
  return pipeline.pad(zip(prompts, answers), length, task.pad_id)


def build(config: ml_collections.ConfigDict, seed: int) -> DataSource:
  """The data named by `config` (`kind` is `task` or `text`).

  Raises:
    ValueError: unknown kind or task; FileNotFoundError: a missing text file.
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
    tokenizer = tokenizers.ByteTokenizer()
    corpus = text.load_text(config.path)
    tokens = pipeline.pack([tokenizer.encode(corpus)], config.length, tokenizer.eos_id)
    num_eval = max(1, int(len(tokens) * config.eval_fraction))  # the end of the corpus

    def rows(t):
      return {"tokens": t, "valid": np.ones(t.shape, bool), "maskable": np.ones(t.shape, bool)}
    return DataSource(rows(tokens[:-num_eval]), rows(tokens[-num_eval:]),
                      tokenizer.vocab_size, tokenizer.mask_id, tokenizer.fingerprint())
  raise ValueError(f"unknown data kind {config.kind!r}; expected 'task' or 'text'")


def describe(source: DataSource) -> dict[str, Any]:
  """A JSON-able summary for logs."""
  return {"examples": int(source.arrays["tokens"].shape[0]),
          "length": int(source.arrays["tokens"].shape[1]),
          "vocab_size": source.vocab_size, "fingerprint": source.fingerprint}
