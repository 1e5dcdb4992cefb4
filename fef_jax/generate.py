"""Batched prompt -> completion generation with any sampler, for text and token prompts.

Prompts of different lengths are left-padded to one length, followed by
`gen_length` masks, so every batch has the same static shape and the sampler
compiles once. The denoiser must ignore the padding: `left_padding_valid_fn`
gives the `valid_fn` for that layout (`fef_jax.models.Denoiser(...,
valid_fn=...)`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import fef_jax as fj
from fef_jax.data.tokenizers import Tokenizer
from fef_jax.types import SampleStats

LogitsFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class LeftPaddingValid:
  """`tokens_NxL -> bool[N, L]`: valid from each row's first token that is not `pad_id`.

  Matches `layout_prompts`' left padding: a pad (or EOS, often the same id)
  that the sampler generates later in the row stays valid. Hashed by value, so
  equal pad ids give equal `valid_fn`s (and one compiled sampler). A prompt
  that itself starts with `pad_id` would lose those leading tokens, so
  `layout_prompts` refuses it.
  """
  pad_id: int

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    return jnp.cumsum(tokens_NxL != self.pad_id, axis=1) > 0


def left_padding_valid_fn(pad_id: int) -> LeftPaddingValid:
  """The `valid_fn` of left-padded rows (see `LeftPaddingValid`)."""
  return LeftPaddingValid(int(pad_id))


def layout_prompts(prompt_ids: Sequence[Sequence[int]], gen_length: int, *, mask_id: int,
                   pad_id: int, prompt_length: int | None = None,
                   length_multiple: int = 1) -> np.ndarray:
  """int32[B, P + gen_length]: left-padded prompts followed by `gen_length` masks.

  Args:
    prompt_ids: B token-id lists (possibly empty).
    gen_length: masks appended after each prompt (> 0).
    mask_id, pad_id: the mask and padding ids.
    prompt_length: P; default the longest prompt, rounded up to a multiple of
      `length_multiple` (so batches of similar prompts share one compiled shape).

  Raises:
    ValueError: no prompts, `gen_length` < 1, a prompt longer than
      `prompt_length`, a prompt containing `mask_id`, or one starting with
      `pad_id` (it would be taken for padding).
  """
  if not prompt_ids:
    raise ValueError("no prompts to lay out")
  if gen_length < 1:
    raise ValueError(f"gen_length must be >= 1, got {gen_length}")
  longest = max(len(p) for p in prompt_ids)
  width = (-(-longest // length_multiple) * length_multiple if prompt_length is None
           else prompt_length)
  tokens = np.full((len(prompt_ids), width + gen_length), pad_id, np.int32)
  tokens[:, width:] = mask_id
  for row, ids in enumerate(prompt_ids):
    ids = np.asarray(ids, np.int64)
    if len(ids) > width:
      raise ValueError(f"prompt {row} has {len(ids)} tokens, longer than the prompt "
                       f"length {width}")
    if (ids == mask_id).any():
      raise ValueError(f"prompt {row} contains mask_id={mask_id}")
    if len(ids) and ids[0] == pad_id:
      raise ValueError(f"prompt {row} starts with pad_id={pad_id}; it would be read as "
                       f"padding (start prompts with a BOS or other token)")
    tokens[row, width - len(ids):width] = ids
  return tokens


def _truncate(ids: np.ndarray, stop_ids: Sequence[int]) -> list[int]:
  stops = np.flatnonzero(np.isin(ids, list(stop_ids))) if stop_ids else np.array([])
  return ids[:stops[0]].tolist() if stops.size else ids.tolist()


@dataclasses.dataclass(frozen=True)
class Generation:
  """What `generate` returns.

  Attributes:
    token_ids: per prompt, the generated ids up to (excluding) the first stop id.
    stats: per-row `SampleStats` over all prompts (int32[B] fields).
    seconds: wall-clock of the sampling calls, compilation included.
  """
  token_ids: list[list[int]]
  stats: SampleStats
  seconds: float


def rows_over(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """The sharding that splits a batch's rows over every axis of `mesh` (data-parallel
  sampling; the parameters keep whatever sharding they were loaded with)."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))


def sample_in_batches(logits_fn: LogitsFn, tokens_NxL: np.ndarray, key: jax.Array, *,
                      method: str, mask_id: int, batch_size: int, progress: bool = False,
                      first_batch: int = 0, timings: list[float] | None = None,
                      rows_sharding: jax.sharding.Sharding | None = None,
                      **options: Any) -> tuple[np.ndarray, SampleStats]:
  """`fef_jax.sample` over all rows, `batch_size` rows per call.

  Every call has `batch_size` rows (the last batch is filled up with copies of
  its first row, whose outputs are dropped), so the sampler compiles once.
  Batch `i` uses `fold_in(key, first_batch + i)`, so that sampling the rows in
  parts, each given the index of its first batch, gives the same results as one
  call. Returns when every batch is done.

  Args:
    timings: optional list to which each batch's sampling wall-clock in seconds
      is appended: from the `fef_jax.sample` call until its results are ready,
      without the key derivation and the transfer of the results to the host.
    rows_sharding: where each batch is placed before sampling, e.g.
      `rows_over(mesh)` to split its rows over a mesh's devices (each row's draws
      do not depend on where it runs); None: JAX's default device.

  Returns:
    (int32[N, L] filled tokens as numpy, per-row `SampleStats` of the N rows).

  Raises:
    ValueError: `batch_size` < 1, or not divisible into `rows_sharding`'s
      shards; as `fef_jax.sample`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if rows_sharding is not None:
    shape = (batch_size, tokens_NxL.shape[1])
    try:
      rows_sharding.shard_shape(shape)
    except ValueError as e:
      raise ValueError(f"batch_size={batch_size} cannot be split over the "
                       f"{len(rows_sharding.device_set)} devices of rows_sharding: use a "
                       f"multiple of their number of row shards ({e})") from e
  outputs, stats = [], []
  starts = range(0, tokens_NxL.shape[0], batch_size)
  for index, lo in enumerate(tqdm.tqdm(starts, desc=f"sample {method}", disable=not progress)):
    batch = tokens_NxL[lo:lo + batch_size]
    real = batch.shape[0]
    if real < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - real, axis=0)])
    if rows_sharding is not None:
      batch = jax.device_put(batch.astype(np.int32, copy=False), rows_sharding)
    batch_key = jax.random.fold_in(key, first_batch + index)
    start = time.perf_counter()
    result = jax.block_until_ready(
        fj.sample(logits_fn, batch, batch_key, method, mask_id=mask_id, **options))
    if timings is not None:
      timings.append(time.perf_counter() - start)
    # One transfer of tokens and statistics.
    result = jax.device_get(result)
    outputs.append(result.tokens[:real])
    stats.append(jax.tree.map(lambda x, n=real: x[:n], result.stats))
  merged = jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *stats)
  return np.concatenate(outputs), merged


def generate(logits_fn: LogitsFn, prompt_ids: Sequence[Sequence[int]], key: jax.Array, *,
             gen_length: int, mask_id: int, pad_id: int, stop_ids: Sequence[int] = (),
             method: str = "fef", batch_size: int = 8, prompt_length: int | None = None,
             length_multiple: int = 1, progress: bool = False,
             rows_sharding: jax.sharding.Sharding | None = None,
             **options: Any) -> Generation:
  """Samples `gen_length` tokens after each prompt with `fef_jax.sample`.

  Batches as `sample_in_batches`; every batch also has the same length, so the
  sampler compiles once.

  Args:
    logits_fn: the denoiser; must treat left padding as padding (see
      `left_padding_valid_fn`).
    prompt_ids: the prompts as token-id lists.
    key: PRNG key.
    gen_length, mask_id, pad_id, prompt_length, length_multiple: see
      `layout_prompts`.
    stop_ids: generated ids after which a completion is cut (e.g. EOS).
    method, **options: the sampler and its options (`fef_jax.sample`).
    batch_size: rows per sampler call.
    progress: show a progress bar over batches.
    rows_sharding: where each batch is placed (`rows_over(mesh)`: rows split
      over the mesh's devices); see `sample_in_batches`.

  Raises:
    ValueError: as `layout_prompts`, `sample_in_batches` and `fef_jax.sample`.
  """
  tokens_BxL = layout_prompts(prompt_ids, gen_length, mask_id=mask_id, pad_id=pad_id,
                              prompt_length=prompt_length, length_multiple=length_multiple)
  width = tokens_BxL.shape[1] - gen_length
  start = time.perf_counter()
  filled_BxL, all_stats = sample_in_batches(logits_fn, tokens_BxL, key, method=method,
                                            mask_id=mask_id, batch_size=batch_size,
                                            progress=progress, rows_sharding=rows_sharding,
                                            **options)
  seconds = time.perf_counter() - start
  generated = filled_BxL[:, width:]
  return Generation(token_ids=[_truncate(row, stop_ids) for row in generated],
                    stats=all_stats, seconds=seconds)


def text_generate_fn(logits_fn: LogitsFn, key: jax.Array, *,
                     encode: Callable[[str], Sequence[int]],
                     decode: Callable[[Sequence[int]], str], mask_id: int, pad_id: int,
                     stop_ids: Sequence[int] = (), gen_length: int, method: str = "fef",
                     batch_size: int = 8, prompt_length: int | None = None,
                     length_multiple: int = 32, progress: bool = False,
                     **options: Any) -> Callable[[list[str]], list[str]]:
  """A `list[str] -> list[str]` completion function for the benchmark harnesses.

  Encodes with `encode` (e.g. a tokenizer's `encode`, or one applying a chat
  template), generates with `generate` (cutting at `stop_ids`) and decodes
  with `decode`. Each call uses a fresh key folded from `key` and the call
  count, so repeated calls draw new samples reproducibly. Prompt lengths are
  rounded up to a multiple of `length_multiple` so that calls on similar
  prompts reuse one compiled sampler. The statistics of every call are
  appended to the returned function's `.stats` list and its sampling time to
  `.seconds`.
  """
  def complete(prompts: list[str]) -> list[str]:
    result = generate(logits_fn, [list(encode(p)) for p in prompts],
                      jax.random.fold_in(key, len(complete.stats)), gen_length=gen_length,
                      mask_id=mask_id, pad_id=pad_id, stop_ids=stop_ids, method=method,
                      batch_size=batch_size, prompt_length=prompt_length,
                      length_multiple=length_multiple, progress=progress, **options)
    complete.stats.append(result.stats)
    complete.seconds.append(result.seconds)
    return [decode(ids) for ids in result.token_ids]

  complete.stats = []
  complete.seconds = []
  return complete


def tokenizer_generate_fn(logits_fn: LogitsFn, tokenizer: Tokenizer, key: jax.Array,
                          **kwargs: Any) -> Callable[[list[str]], list[str]]:
  """`text_generate_fn` with a `fef_jax.data.tokenizers.Tokenizer`'s encode, decode,
  mask, pad and EOS (the stop id)."""
  return text_generate_fn(logits_fn, key, encode=tokenizer.encode, decode=tokenizer.decode,
                          mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                          stop_ids=(tokenizer.eos_id,), **kwargs)
