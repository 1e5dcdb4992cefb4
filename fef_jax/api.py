"""`fef_jax.sample`: every sampler behind one signature and one result type."""
from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fef_jax import samplers
from fef_jax.samplers import cache
from fef_jax.samplers import head
from fef_jax.samplers import loop
from fef_jax.types import SampleResult

LogitsFn = Callable[[jax.Array], jax.Array]


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_tokens(tokens_BxL: Any) -> jax.Array | np.ndarray:
  """int32 tokens; host arrays stay on the host (the jitted call moves them, which costs
  less at batch 1 than a separate `jnp.asarray` transfer)."""
  if not hasattr(tokens_BxL, "dtype"):
    tokens_BxL = np.asarray(tokens_BxL)
  if not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):
    raise TypeError(f"tokens must be an integer array, got dtype {tokens_BxL.dtype}")
  if tokens_BxL.ndim != 2 or 0 in tokens_BxL.shape:
    raise ValueError(f"tokens must have shape [batch, length] with both > 0, "
                     f"got shape {tuple(tokens_BxL.shape)}")
  if isinstance(tokens_BxL, np.ndarray):
    return tokens_BxL.astype(np.int32, copy=False)
  return jnp.asarray(tokens_BxL, jnp.int32)


@functools.lru_cache(maxsize=256)
def _abstract_output_of(definition: Any, leaf_shapes: tuple[tuple[Any, Any], ...],
                        batch: int, length: int) -> Any:
  """The abstract output on int32[batch, length] of `join_denoiser(definition, leaves)`
  for leaves of these (shape, dtype) pairs: traced once per tree structure, parameter
  shapes and input shape.

  Cached because tracing costs milliseconds per call, more than a whole sampling
  run of a small model at batch 1. The key holds the parameters' shapes, not the
  parameters: a new parameter set of one model is not traced again, and the cache
  keeps no parameters alive. A static callable is its own key, kept alive as the jit
  cache of `_run` keeps it. Tracing a function of the leaves (rather than
  `logits_fn` itself) also keeps `jax.eval_shape` from building its source info out
  of `repr(logits_fn)`, which for a dataclass denoiser formats every parameter array.
  """
  leaf_specs = tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in leaf_shapes)
  return jax.eval_shape(lambda leaves, t: join_denoiser(definition, leaves)(t), leaf_specs,
                        jax.ShapeDtypeStruct((batch, length), jnp.int32))


def _vocab_size(definition: Any, leaf_shapes: tuple[tuple[Any, Any], ...],
                tokens_BxL: jax.Array) -> int:
  """Reads V off the abstract output of the denoiser `_split` gave as `(definition, _,
  leaf_shapes)` and checks its shape and dtype."""
  batch, length = tokens_BxL.shape
  try:
    out = _abstract_output_of(definition, leaf_shapes, batch, length)
  except Exception as e:  # the user's function: report whatever it raised
    raise ValueError(f"logits_fn failed on an int32{[batch, length]} input: "
                     f"{type(e).__name__}: {e}") from e
  if (not hasattr(out, "shape") or len(out.shape) != 3
      or tuple(out.shape[:2]) != (batch, length)):
    raise ValueError(f"logits_fn must map int32[N, L] to float[N, L, V]; on "
                     f"int32{[batch, length]} it returned {getattr(out, 'shape', out)}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(f"logits_fn must return floating logits, got {out.dtype}")
  return int(out.shape[2])


def _check_values(tokens: np.ndarray, mask_id: int, vocab_size: int) -> None:
  """Token ids in range, and something to sample in every row."""
  bad = (tokens != mask_id) & ((tokens < 0) | (tokens >= vocab_size))
  if bad.any():
    row, col = map(int, np.argwhere(bad)[0])
    raise ValueError(f"token id {int(tokens[row, col])} at [{row}, {col}] is outside the "
                     f"vocabulary [0, {vocab_size}) and is not mask_id={mask_id}")
  no_mask = np.flatnonzero(~(tokens == mask_id).any(axis=1))
  if no_mask.size:
    raise ValueError(f"rows {no_mask[:10].tolist()} contain no mask_id={mask_id}: "
                     f"nothing to sample")


def split_denoiser(logits_fn: LogitsFn) -> tuple[Any, tuple[Any, ...]]:
  """(static definition, array leaves) of a denoiser, for `jax.jit`.

  A denoiser registered as a pytree whose leaves are all arrays (the models'
  `Denoiser`s: their parameters) splits into its tree structure, which holds the
  model and hashes by value, and its parameters. Passed to the compiled sampler
  as arguments, the parameters are not embedded in it as constants: two
  denoisers of one model share one compiled program (a checkpoint sampled
  during training, or a new one, compiles nothing), and the program's size and
  compile time do not grow with the parameters. Any other callable (a plain
  function, an oracle's bound method) is its own static definition, with no
  leaves; `join_denoiser` inverts both.
  """
  definition, leaves, _ = _split(logits_fn)
  return definition, leaves


class _LeafShapes(tuple):
  """A denoiser's leaves' (shape, dtype) pairs, hashed once (a key of
  `_abstract_output_of`, looked up on every call)."""

  def __new__(cls, pairs):
    self = super().__new__(cls, pairs)
    self.hash = tuple.__hash__(self)
    return self

  def __hash__(self):
    return self.hash


# The split of each live frozen-dataclass denoiser: flattening a model's parameters and
# keying their shapes anew would cost every call ~15 us (3 layers) against ~3 us.
# Frozen fields cannot be reassigned, so the split stays true; the entry holds the
# parameters (as the denoiser does), not the denoiser, and goes with it.
_SPLITS: "weakref.WeakKeyDictionary[Any, tuple[Any, tuple[Any, ...], tuple[Any, ...]]]" = (
    weakref.WeakKeyDictionary())


def _split(logits_fn: LogitsFn) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
  """`split_denoiser`'s (definition, leaves) and the leaves' (shape, dtype) pairs."""
  frozen = (dataclasses.is_dataclass(logits_fn) and not isinstance(logits_fn, type)
            and logits_fn.__dataclass_params__.frozen)
  if frozen:
    try:
      return _SPLITS[logits_fn]
    except (KeyError, TypeError):  # new, or not weakly referable or hashable
      pass
  leaves, treedef = jax.tree_util.tree_flatten(logits_fn)
  if (jax.tree_util.treedef_is_leaf(treedef)
      or not all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)):
    return logits_fn, (), ()
  split = (treedef, tuple(leaves), _LeafShapes((leaf.shape, leaf.dtype) for leaf in leaves))
  if frozen:
    try:
      _SPLITS[logits_fn] = split
    except TypeError:
      pass
  return split


def join_denoiser(definition: Any, leaves: tuple[Any, ...]) -> LogitsFn:
  """The denoiser that `split_denoiser` split into `(definition, leaves)`."""
  if isinstance(definition, jax.tree_util.PyTreeDef):
    return jax.tree_util.tree_unflatten(definition, leaves)
  return definition


@functools.partial(jax.jit, static_argnames=("definition", "config"))
def _run(definition: Any, leaves: tuple[Any, ...], tokens_BxL: jax.Array, key: jax.Array,
         config: samplers.SamplerConfig):
  """(result, bool[B] rows with NaN/+inf logits, bool[B] rows with masks left) of the
  denoiser `join_denoiser(definition, leaves)`: the flags are computed here so that
  checking them costs one transfer, not two calls."""
  result, bad_logits_B = loop.run(join_denoiser(definition, leaves), tokens_BxL, key, config,
                                  samplers.PLANS[config.method])
  return result, bad_logits_B, jnp.any(result.tokens == config.mask_id, axis=1)


def sample(logits_fn: LogitsFn, tokens_BxL: Any, key: jax.Array, method: str = "fef", *,
           mask_id: int, **options: Any) -> SampleResult:
  """Fills every `mask_id` position of `tokens_BxL` with the chosen sampler.

  Args:
    logits_fn: the denoiser, any hashable callable `int32[N, L] -> float[N, L, V]`
      that accepts any batch size `N` (FeF calls it on `B * window` rows). It
      sees `mask_id` at masked positions. A pytree whose leaves are arrays (a
      model's `Denoiser`) is compiled once per tree structure, its arrays passed
      as arguments (`split_denoiser`); any other callable is compiled with what
      it closes over, once per object. The logit of `mask_id`, if it lies
      inside the vocabulary, is ignored: the mask is never sampled. With
      `cache="exact"` or `"prefix"` it must also be a block-local denoiser with
      an exact cache, with `cache="approximate"` a block-local denoiser
      (`fef_jax.samplers.cache.BlockLocalDenoiser`); with `verifier="head"` a
      denoiser with a speculative head (`fef_jax.samplers.head.HeadDenoiser`),
      as with `drafter="head"` (which with `cache="exact"` also needs the
      head denoiser's `block_hidden`).
    tokens_BxL: int[B, L]; positions that are not `mask_id` are the prompt
      and are returned unchanged.
    key: a PRNG key; split into one key per row, so rows are independent.
    method: one of `ancestral, confidence, threshold, eb, first_hitting,
      random_sizes, fef` (see `fef_jax.samplers`).
    mask_id: the mask token id (inside or outside the model's vocabulary).
    **options: method options (see `fef_jax.samplers.config.SamplerConfig`):
      `steps, block_length, temperature, top_k, top_p, select, order, window,
      mode, cache, refresh_every, verifier, drafter, threshold, factor, gamma,
      schedule`.

  Returns:
    `SampleResult` with `tokens` int32[B, L] (no mask left) and per-row `stats`.

  Raises:
    ValueError / TypeError: unknown method or option, option out of range,
      tokens not a 2-D integer array, token ids outside `[0, V)` other than
      `mask_id`, a row with no mask, a `logits_fn` whose output is not
      float[N, L, V], or, with `cache="exact"`, a denoiser without an exact
      cache or blocks that do not fit its attention blocks, or, with
      `cache="approximate"`, a denoiser without the block-local interface or a
      block whose masks are not contiguous
      (`fef_jax.samplers.cache.check_denoiser`), or, with `cache="prefix"`, a
      denoiser without an exact cache or a length that is not a whole number of
      its attention blocks (`fef_jax.samplers.cache.check_denoiser`), or,
      with `verifier="head"` or `drafter="head"`, a denoiser without a head.
      Value checks need concrete `tokens` (outside `jax.jit`).
    FloatingPointError: `logits_fn` returned NaN or +inf at a masked position
      (concrete inputs only; the offending rows are named).
  """
  config = samplers.make_config(method, mask_id, **options)
  concrete_input = tokens_BxL if isinstance(tokens_BxL, np.ndarray) else None
  tokens_BxL = _check_tokens(tokens_BxL)
  try:
    hash(logits_fn)
  except TypeError as e:
    raise TypeError("logits_fn must be hashable (a function, a bound method of an "
                    "object hashed by identity, or a functools.partial)") from e
  definition, leaves, leaf_shapes = _split(logits_fn)
  vocab_size = _vocab_size(definition, leaf_shapes, tokens_BxL)
  if vocab_size - int(0 <= config.mask_id < vocab_size) < 1:
    raise ValueError(f"the vocabulary of size {vocab_size} has no token besides the mask")
  if config.top_k > vocab_size:
    raise ValueError(f"top_k={config.top_k} exceeds the vocabulary size {vocab_size}")
  if _is_concrete(tokens_BxL) and concrete_input is None:
    concrete_input = np.asarray(tokens_BxL)
  if concrete_input is not None:
    _check_values(concrete_input, config.mask_id, vocab_size)
  if config.cache != "none":
    cache.check_denoiser(logits_fn, config.cache, config.block_length, config.mask_id,
                         tokens_BxL.shape[1], concrete_input)
  if config.verifier == "head":
    head.check_denoiser(logits_fn)
  if config.drafter == "head":
    head.check_denoiser(logits_fn, "drafter='head'", cached=config.cache != "none")
  result, bad_logits_B, masks_left_B = _run(definition, leaves, tokens_BxL, key, config)
  if not _is_concrete(bad_logits_B):
    return result
  bad_logits_B, masks_left_B = jax.device_get((bad_logits_B, masks_left_B))
  if bad_logits_B.any():
    rows = np.flatnonzero(bad_logits_B)[:10].tolist()
    raise FloatingPointError(f"logits_fn returned NaN or +inf logits at masked positions "
                             f"of rows {rows}; the samples of those rows are not valid")
  if masks_left_B.any():
    rows = np.flatnonzero(masks_left_B)[:10].tolist()
    raise RuntimeError(f"method={method!r} left masks in rows {rows}: "
                       f"its plan stopped committing tokens")
  return result
