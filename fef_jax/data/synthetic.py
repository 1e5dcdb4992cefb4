"""Token-level tasks with exactly checkable answers, where factorization error shows.

Each task generates `(prompt, answer)` pairs from a `numpy.random.Generator`
and checks answers exactly. Most have many valid answers whose tokens are
correlated given the prompt, so sampling the answer tokens independently from
exact marginals (a parallel denoising step) produces invalid answers, while
exact joint sampling never does.

Shared vocabulary (ids; `V = task.vocab_size`, mask id `V` as everywhere in
fef_jax, see `fef_jax.data.tokenizers`):
- `PAD_ID = 0`: padding (for `pipeline.pad`); never in a prompt or answer.
- `SEP_ID = 1`: ends every prompt, marking where the answer starts.
- symbol `s` (`0 <= s < task.num_symbols`) is id `FIRST_SYMBOL_ID + s = s + 2`.
Prompts are `[symbols..., SEP_ID]` of a fixed length, answers are symbols of a
fixed length, so `V = 2 + num_symbols`. A task with `prompt_pad = n > 0` (a field of
`PairSum`) opens every prompt with `n` PAD ids, e.g. to make the prompt a whole number
of a block-causal model's attention blocks.

| task          | prompt symbols            | answer symbols                     |
|---------------|---------------------------|------------------------------------|
| `PairSum`     | `k` targets in `[0, 2b-2]`| `k` digit pairs, pair i sums to t_i|
| `Permutation` | `n` distinct, sorted      | any ordering of the prompt symbols |
| `Copy`        | `n` symbols               | the same `n` symbols (one answer)  |
| `Phrases`     | none                      | one of the given phrases, whole    |

`task.sample(rng, num)` returns `(prompts_NxP, answers_NxA)` as int32 ids;
`task.check(prompts_NxP, answers_NxA)` returns `valid_N` (bool). An answer
holding any id that is not a symbol of the task (pad, sep, mask, out of range)
is invalid.
"""
from __future__ import annotations

import abc
import dataclasses

import numpy as np

PAD_ID = 0
SEP_ID = 1
FIRST_SYMBOL_ID = 2


class Task(abc.ABC):
  """Prompt/answer task over the shared vocabulary above."""

  pad_id = PAD_ID
  sep_id = SEP_ID

  @property
  @abc.abstractmethod
  def num_symbols(self) -> int:
    """Number of content symbols."""

  @property
  @abc.abstractmethod
  def prompt_symbols(self) -> int:
    """Symbols per prompt (the prompt has one more id, SEP)."""

  @property
  @abc.abstractmethod
  def answer_length(self) -> int:
    """Ids per answer."""

  @abc.abstractmethod
  def _sample_symbols(self, rng: np.random.Generator,
                      num: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt symbols `[num, prompt_symbols]`, answer symbols `[num, A]`)."""

  @abc.abstractmethod
  def _check_symbols(self, prompt_NxS: np.ndarray,
                     answer_NxA: np.ndarray) -> np.ndarray:
    """bool[N]; answer symbols are known to lie in `[0, num_symbols)`."""

  @property
  def prompt_pad(self) -> int:
    """PAD ids that open every prompt (none unless a task sets it)."""
    return 0

  @property
  def vocab_size(self) -> int:
    """`V = 2 + num_symbols`; the model predicts ids in `[0, V)`."""
    return FIRST_SYMBOL_ID + self.num_symbols

  @property
  def mask_id(self) -> int:
    """The absorbing MASK id, `V`."""
    return self.vocab_size

  @property
  def prompt_length(self) -> int:
    """Ids per prompt, leading PADs and SEP included."""
    return self.prompt_pad + self.prompt_symbols + 1

  def sample(self, rng: np.random.Generator,
             num: int) -> tuple[np.ndarray, np.ndarray]:
    """`num` examples: (prompts int32[num, P], answers int32[num, A]) as ids.

    Raises:
      ValueError: `num < 1`.
    """
    if num < 1:
      raise ValueError(f"num must be >= 1, got {num}.")
    prompt_NxS, answer_NxA = self._sample_symbols(rng, num)
    pad_NxD = np.full((num, self.prompt_pad), PAD_ID, np.int32)
    sep_Nx1 = np.full((num, 1), SEP_ID, np.int32)
    prompts_NxP = np.concatenate(
        [pad_NxD, prompt_NxS.astype(np.int32) + FIRST_SYMBOL_ID, sep_Nx1], axis=1)
    return prompts_NxP, answer_NxA.astype(np.int32) + FIRST_SYMBOL_ID

  def check(self, prompts_NxP, answers_NxA) -> np.ndarray:
    """valid_N: whether each answer is a correct answer to its prompt.

    Raises:
      ValueError: shapes other than `[N, prompt_length]` and
        `[N, answer_length]`, or a prompt that is not task symbols followed
        by SEP_ID (after `prompt_pad` PAD ids).
    """
    prompts_NxP = np.asarray(prompts_NxP)
    answers_NxA = np.asarray(answers_NxA)
    if (prompts_NxP.ndim != 2 or answers_NxA.ndim != 2
        or prompts_NxP.shape[0] != answers_NxA.shape[0]
        or prompts_NxP.shape[1] != self.prompt_length
        or answers_NxA.shape[1] != self.answer_length):
      raise ValueError(
          f"expected prompts [N, {self.prompt_length}] and answers "
          f"[N, {self.answer_length}], got {prompts_NxP.shape} and "
          f"{answers_NxA.shape}.")
    prompt_NxS = prompts_NxP[:, self.prompt_pad:-1].astype(np.int64) - FIRST_SYMBOL_ID
    if (np.any(prompts_NxP[:, -1] != SEP_ID) or np.any(prompt_NxS < 0)
        or np.any(prompt_NxS >= self.num_symbols)
        or np.any(prompts_NxP[:, :self.prompt_pad] != PAD_ID)):
      raise ValueError(f"prompts must be {self.prompt_pad} PAD ids, then task symbols "
                       f"followed by SEP_ID.")
    answer_NxA = answers_NxA.astype(np.int64) - FIRST_SYMBOL_ID
    in_range_N = np.all((answer_NxA >= 0) & (answer_NxA < self.num_symbols),
                        axis=1)
    answer_NxA = np.where(in_range_N[:, None], answer_NxA, 0)
    return in_range_N & self._check_symbols(prompt_NxS, answer_NxA)


def _check_positive(name: str, value: int) -> None:
  """ValueError unless `value >= 1`."""
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {value}.")


@dataclasses.dataclass(frozen=True)
class PairSum(Task):
  """`pairs` pairs of base-`base` digits, pair `i` summing to target `t_i`.

  Prompt `[t_1, ..., t_k]` (after `prompt_pad` PAD ids), answer
  `[a_1, c_1, ..., a_k, c_k]`. Generation
  draws the digits uniformly and sets `t_i = a_i + c_i`, so given `t_i` pair
  `i` is uniform over its `min(t_i, 2b-2-t_i) + 1` valid pairs: the two digits
  of a pair must agree, pairs are independent. Symbols `0..2b-2` (the target
  range; digits use `0..b-1`).
  """
  base: int = 10
  pairs: int = 1
  prompt_pad: int = 0

  def __post_init__(self):
    if self.base < 2:
      raise ValueError(f"base must be >= 2, got {self.base}.")
    _check_positive("pairs", self.pairs)
    if self.prompt_pad < 0:
      raise ValueError(f"prompt_pad must be >= 0, got {self.prompt_pad}.")

  @property
  def num_symbols(self) -> int:
    return 2 * self.base - 1

  @property
  def prompt_symbols(self) -> int:
    return self.pairs

  @property
  def answer_length(self) -> int:
    return 2 * self.pairs

  def _sample_symbols(self, rng, num):
    digits_NxKx2 = rng.integers(0, self.base, (num, self.pairs, 2))
    return digits_NxKx2.sum(axis=2), digits_NxKx2.reshape(num, 2 * self.pairs)

  def _check_symbols(self, prompt_NxS, answer_NxA):
    digits_N = np.all(answer_NxA < self.base, axis=1)
    sums_NxK = answer_NxA.reshape(len(answer_NxA), self.pairs, 2).sum(axis=2)
    return digits_N & np.all(sums_NxK == prompt_NxS, axis=1)


@dataclasses.dataclass(frozen=True)
class _SymbolSequenceTask(Task):
  """A task whose prompt and answer are both `length` symbols of `alphabet_size`."""
  alphabet_size: int = 8
  length: int = 4

  @property
  def num_symbols(self) -> int:
    return self.alphabet_size

  @property
  def prompt_symbols(self) -> int:
    return self.length

  @property
  def answer_length(self) -> int:
    return self.length


@dataclasses.dataclass(frozen=True)
class Permutation(_SymbolSequenceTask):
  """Reorder `length` distinct symbols: any of the `length!` orderings is valid.

  The prompt is a uniformly drawn set of `length` of the `alphabet_size`
  symbols, sorted; the generated answer is a uniformly random ordering.
  """

  def __post_init__(self):
    _check_positive("length", self.length)
    if self.alphabet_size < self.length:
      raise ValueError(f"alphabet_size ({self.alphabet_size}) must be >= "
                       f"length ({self.length}).")

  def _sample_symbols(self, rng, num):
    keys_NxS = rng.random((num, self.alphabet_size))
    chosen_NxL = np.argsort(keys_NxS, axis=1)[:, :self.length]
    return np.sort(chosen_NxL, axis=1), rng.permuted(chosen_NxL, axis=1)

  def _check_symbols(self, prompt_NxS, answer_NxA):
    return np.all(np.sort(answer_NxA, axis=1) == np.sort(prompt_NxS, axis=1),
                  axis=1)


@dataclasses.dataclass(frozen=True)
class Copy(_SymbolSequenceTask):
  """Repeat the prompt's `length` uniform symbols; the only valid answer.

  A control task: the answer is deterministic given the prompt, so there is
  no factorization error to expose.
  """

  def __post_init__(self):
    _check_positive("alphabet_size", self.alphabet_size)
    _check_positive("length", self.length)

  def _sample_symbols(self, rng, num):
    prompt_NxL = rng.integers(0, self.alphabet_size, (num, self.length))
    return prompt_NxL, prompt_NxL.copy()

  def _check_symbols(self, prompt_NxS, answer_NxA):
    return np.all(answer_NxA == prompt_NxS, axis=1)


@dataclasses.dataclass(frozen=True)
class Phrases(Task):
  """One of several equal-length phrases, whole; a mixture of two is invalid.

  The default is "New York" = symbols (0, 1) and "Los Angeles" = (2, 3), with
  equal probability: per-position marginals are uniform over two symbols each,
  so independent sampling yields "New Angeles" or "Los York" half the time.
  The prompt has no symbols (it is just SEP).

  Attributes:
    phrases: distinct tuples of symbols, all of one length >= 1.
    probs: the probability of each phrase; None for uniform.
  """
  phrases: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3))
  probs: tuple[float, ...] | None = None

  def __post_init__(self):
    if len(self.phrases) < 2:
      raise ValueError(f"need at least 2 phrases, got {len(self.phrases)}.")
    lengths = {len(phrase) for phrase in self.phrases}
    if len(lengths) != 1 or 0 in lengths:
      raise ValueError(f"phrases must share one length >= 1, got lengths "
                       f"{sorted(lengths)}.")
    if len(set(self.phrases)) != len(self.phrases):
      raise ValueError("phrases must be distinct.")
    if min(min(phrase) for phrase in self.phrases) < 0:
      raise ValueError("phrase symbols must be >= 0.")
    if self.probs is not None and (
        len(self.probs) != len(self.phrases) or min(self.probs) <= 0
        or abs(sum(self.probs) - 1) > 1e-9):
      raise ValueError(f"probs must be {len(self.phrases)} positive numbers "
                       f"summing to 1, got {self.probs}.")

  @property
  def num_symbols(self) -> int:
    return 1 + max(max(phrase) for phrase in self.phrases)

  @property
  def prompt_symbols(self) -> int:
    return 0

  @property
  def answer_length(self) -> int:
    return len(self.phrases[0])

  def _sample_symbols(self, rng, num):
    choice_N = rng.choice(len(self.phrases), size=num, p=self.probs)
    return (np.zeros((num, 0), np.int64),
            np.asarray(self.phrases, np.int64)[choice_N])

  def _check_symbols(self, prompt_NxS, answer_NxA):
    del prompt_NxS  # Unconditional.
    phrases_KxA = np.asarray(self.phrases, np.int64)
    return np.any(np.all(answer_NxA[:, None, :] == phrases_KxA[None], axis=2),
                  axis=1)
