"""The independent judge: a causal transformer that scores finished text, never samples it.

Generative perplexity (MDLM, ReMDM, Fast-dLLM) scores a sampler's output by the
NLL per token under an autoregressive model trained separately. Here the judge is
the project's `Transformer` with `attention="block_causal", block_length=1` and
no time conditioning, trained with next-token cross-entropy
(`fef_jax.train.causal_loss`) on the same training split as the diffusion models.
Its score of a token `x[i]` is `-log p(x[i] | x[<i])`; a row's score is the mean
over its scored positions (`scored_from` onward; position 0 has no context and is
never scored).

The judge reads only ordinary token ids (`[0, V)`): a sample that still holds a
mask, or any other id outside the vocabulary, is refused, as is text tokenized
with another tokenizer than the judge's (`check_tokenizer`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fef_jax.models import transformer
from fef_jax.train import causal_loss

LogitsFn = Callable[[jax.Array], jax.Array]


class TokenizerMismatchError(ValueError):
  """The judge was trained on another tokenization than the text it is asked to score."""


def check_causal(config: transformer.TransformerConfig) -> None:
  """Raises ValueError unless `config` is a causal model (block-causal, blocks of one
  position, no time conditioning): otherwise its logits at `i` could read `x[i+1]`."""
  if (config.attention, config.block_length, config.time_conditioning) != (
      "block_causal", 1, False):
    raise ValueError(
        f"the judge must be causal (attention='block_causal', block_length=1, "
        f"time_conditioning=False); got attention={config.attention!r}, "
        f"block_length={config.block_length!r}, "
        f"time_conditioning={config.time_conditioning!r}")


def check_tokenizer(judge_fingerprint: str, text_fingerprint: str) -> None:
  """Refuses to score text tokenized otherwise than the judge's training data.

  Raises:
    TokenizerMismatchError: the fingerprints (`Tokenizer.fingerprint()`: kind,
      vocabulary size, special ids and a hash of the vocabulary) differ; the same
      ids would mean other strings, so the NLL would be meaningless.
  """
  if judge_fingerprint != text_fingerprint:
    raise TokenizerMismatchError(
        f"the judge was trained with tokenizer {judge_fingerprint} but the text to score "
        f"is tokenized with {text_fingerprint}; train the judge on the same tokenizer "
        f"(delete the judge's run directory to retrain it)")


@dataclasses.dataclass(frozen=True, eq=False)
class Judge:
  """A trained causal model and the tokenizer it was trained with.

  Attributes:
    model: the causal `Transformer` (checked on construction).
    params: its parameters.
    tokenizer_fingerprint: `Tokenizer.fingerprint()` of its training data.

  Raises:
    ValueError: (on construction) a model that is not causal (`check_causal`).
  """
  model: transformer.Transformer
  params: Any
  tokenizer_fingerprint: str

  def __post_init__(self):
    check_causal(self.model.config)

  @property
  def vocab_size(self) -> int:
    return self.model.config.vocab_size

  @functools.cached_property
  def logits_fn(self) -> LogitsFn:
    """Jitted `int32[N, L] -> float32[N, L, V]`; position `i` predicts `x[i+1]`."""
    apply = self.model.apply
    params = self.params
    return jax.jit(lambda tokens_NxL: apply({"params": params}, tokens_NxL))


def check_tokens(tokens_NxL: np.ndarray, vocab_size: int) -> np.ndarray:
  """`tokens_NxL` as int32; refuses anything but finished text of ordinary ids.

  Raises:
    ValueError: not a non-empty [N, L] integer array with `L >= 2`, or an id outside
      `[0, vocab_size)` (a mask left in a sample, or another vocabulary), naming
      the first one.
  """
  tokens_NxL = np.asarray(tokens_NxL)
  if (tokens_NxL.ndim != 2 or tokens_NxL.shape[0] == 0 or tokens_NxL.shape[1] < 2
      or not np.issubdtype(tokens_NxL.dtype, np.integer)):
    raise ValueError(f"the judge scores int[N, L] text with N >= 1 and L >= 2, got "
                     f"{tokens_NxL.dtype}{list(tokens_NxL.shape)}")
  bad = (tokens_NxL < 0) | (tokens_NxL >= vocab_size)
  if bad.any():
    row, col = map(int, np.argwhere(bad)[0])
    raise ValueError(f"the judge scores finished text only: token id "
                     f"{int(tokens_NxL[row, col])} at [{row}, {col}] is outside its "
                     f"vocabulary [0, {vocab_size}) (a mask left in a sample?)")
  return tokens_NxL.astype(np.int32)


def token_nll(logits_fn: LogitsFn, tokens_NxL: np.ndarray, vocab_size: int, *,
              batch_size: int = 64) -> np.ndarray:
  """float64[N, L]: `-log p(x[i] | x[<i])` under a causal model; column 0 is NaN.

  Args:
    logits_fn: a causal model's `int32[n, L] -> float[n, L, V]` (e.g.
      `Judge.logits_fn`); called on at most `batch_size` rows at a time (the last
      chunk is padded with copies of its first row, so it compiles once).
    tokens_NxL: finished text, ids in `[0, vocab_size)`.
    vocab_size: `V`.
    batch_size: rows per call.

  Raises:
    ValueError: as `check_tokens`; `batch_size < 1`.
  """
  tokens_NxL = check_tokens(tokens_NxL, vocab_size)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  num = tokens_NxL.shape[0]
  chunks = []
  for lo in range(0, num, batch_size):
    chunk = tokens_NxL[lo:lo + batch_size]
    real = chunk.shape[0]
    chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - real, axis=0)])
    nll = causal_loss.next_token_nll(logits_fn(jnp.asarray(chunk)), jnp.asarray(chunk))
    chunks.append(np.asarray(nll, np.float64)[:real])
  return np.concatenate([np.full((num, 1), np.nan), np.concatenate(chunks)], axis=1)


def mean_nll(logits_fn: LogitsFn, tokens_NxL: np.ndarray, vocab_size: int, scored_from: int,
             *, batch_size: int = 64) -> np.ndarray:
  """float64[N]: each row's mean NLL in nats per token over positions `scored_from..L-1`.

  For a sample continuing a prompt of `P` tokens, `scored_from=P` scores exactly
  the generated tokens, each given everything before it (the prompt included).

  Raises:
    ValueError: as `token_nll`; `scored_from` outside `[1, L)`.
  """
  length = np.shape(tokens_NxL)[1] if np.ndim(tokens_NxL) == 2 else 0
  if not 1 <= scored_from < length:
    raise ValueError(f"scored_from must lie in [1, L={length}) (position 0 has no "
                     f"context), got {scored_from}")
  nll_NxL = token_nll(logits_fn, tokens_NxL, vocab_size, batch_size=batch_size)
  return nll_NxL[:, scored_from:].mean(axis=1)
