"""A pre-norm transformer denoiser for masked diffusion, bidirectional or block-causal.

`Transformer(config)(tokens_BxL, valid_BxL, t_B)` maps token ids to float32
logits over the model's `vocab_size` output tokens at every position:
token embedding -> [RMSNorm -> multi-head attention with RoPE -> residual,
RMSNorm -> SwiGLU MLP -> residual] x num_layers -> RMSNorm -> output projection
(tied to the embedding table or untied). Attention is non-causal by default;
with `attention="block_causal"` a position of block `b` (positions
`[b K, (b+1) K)`, `K = block_length`) attends to the positions of blocks `<= b`
only. `valid_BxL` hides padding keys. Parameters are always float32;
`config.dtype` is the compute dtype (activations, matmul inputs), and logits
accumulate in float32: the parameters are the float32 master weights, cast
where they are used (see `TransformerConfig.dtype`).

The full pass's attention runs through `jax.nn.dot_product_attention` with the
implementation `config.attention_impl` asks for (`attention_implementation`):
XLA's everywhere, or cuDNN's fused flash attention on a CUDA GPU when its
constraints hold. Each block can be rematerialized in the backward pass with a
`jax.checkpoint` policy (`config.remat`, `REMAT_POLICIES`).

Cached evaluation: `Transformer.encode` returns the logits and every layer's
keys and values (a `KVCache`); `Transformer.block_logits` evaluates `C` copies
of a span of `S` positions `[start, start + S)` against a cached state, sharing
one cache among the copies. In a block-causal model the keys and values of the
blocks before `start` do not depend on later positions and the span's logits
do not depend on positions after it, so with `start` a multiple of
`block_length` this equals the full forward pass of each copy (the cache is
*exact*). In a bidirectional model it is an approximation (the "dual cache" of
Fast-dLLM): the span attends to the cached keys on both sides of it, which were
computed from the cached state's span, not the copy's; it is exact only for a
copy whose span equals the cached state's.

The mask id is an input id: with `mask_id == vocab_size` the embedding table
has `vocab_size + 1` rows and the mask is never an output; with `mask_id` inside
the vocabulary the table has `vocab_size` rows (as in imported models).

`Denoiser(model, params)` wraps a model and its parameters into the hashable
`logits_fn` that `fef_jax.sample` takes.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fef_jax.models import host_init

ATTENTION_KINDS = ("bidirectional", "block_causal")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# What the backward pass keeps of a block's forward computation, by name; the rest is
# recomputed. "none" keeps everything (no remat); "full" keeps only the block's inputs
# (`nn.remat`'s default, what `remat=True` has always meant).
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# Fields added after checkpoints existed print only away from their default, so that
# the repr of an older config (a checkpoint's fingerprint) is unchanged.
_NEW_FIELD_DEFAULTS = {"attention_impl": "auto"}
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_EMBED_INIT = nn.initializers.normal(stddev=0.02)
_TIME_SCALE = 1000.0  # t in [0, 1] is embedded as the "step" 1000 t


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and numerics of a `Transformer` (static; hashable).

  Attributes:
    vocab_size: `V`, the number of output logits per position.
    mask_id: the mask token's input id, in `[0, vocab_size]`; `vocab_size`
      appends one embedding row for it.
    max_length: the longest sequence `__call__` accepts.
    d_model: width of the residual stream.
    num_layers: number of transformer blocks.
    num_heads: attention heads; `d_model / num_heads` (the head dim) must be
      an even integer (RoPE rotates pairs of features).
    mlp_dim: hidden width of the SwiGLU MLP.
    rope_theta: RoPE base wavelength.
    time_conditioning: condition on the diffusion time `t_B` (a sinusoidal
      embedding, a two-layer MLP, added to the residual stream).
    tie_embeddings: use the embedding table (its first `vocab_size` rows) as
      the output projection.
    remat: what the backward pass keeps of each block's forward computation:
      a name in `REMAT_POLICIES` (`"none"`; `"full"`, recompute the block from
      its input; `"dots_saveable"`, keep every matmul output, XLA attention's
      scores included; `"dots_with_no_batch_dims_saveable"`, keep the
      projections' outputs and recompute attention and elementwise work), or
      a bool: False is `"none"`, True is `"full"` (as before names existed).
      The math is the same under every policy; memory and recomputation differ.
    dtype: compute dtype, e.g. `jnp.float32` or `jnp.bfloat16`. Parameters stay
      float32 whatever it is, and are cast to it where used, so with bfloat16
      the float32 parameters are the master weights the optimizer updates.
    attention: `"bidirectional"` or `"block_causal"` (see the module docstring).
    block_length: the attention block length in positions; required with
      `block_causal`, None with `bidirectional`.
    attention_impl: the full pass's attention kernel: `"xla"` (any platform),
      `"cudnn"` (cuDNN flash attention: a CUDA GPU of compute capability >= 8.0,
      a bfloat16 or float16 `dtype`, a head dim that is a multiple of 8 and at
      most 128, or 256 from compute capability 9.0), or `"auto"` (cuDNN where
      all of that holds, XLA otherwise). With either, a masked pass over an odd
      length runs on XLA (cuDNN's backward pass with a mask needs even
      lengths). The cached span passes always use `attend_span`. All compute the same
      function up to round-off (`cudnn` applies a mask as an additive bias of
      -2^41, which leaves excluded keys the same zero weight). Printed in the
      repr only when not `"auto"`.

  Raises:
    ValueError: (on construction) a size that is not a positive int, `mask_id`
      outside `[0, vocab_size]`, `d_model` not divisible by `num_heads`, an odd
      head dim, `rope_theta <= 0`, a `dtype` that is not floating, an unknown
      `attention`, a `block_length` that does not fit it, an unknown `remat`
      policy or `attention_impl`, or `attention_impl="cudnn"` with a dtype or
      head dim cuDNN cannot take; the message names the field. (`"cudnn"` on
      a platform without it raises when the model runs: see
      `attention_implementation`.)
  """
  vocab_size: int
  mask_id: int
  max_length: int
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  rope_theta: float = 10000.0
  time_conditioning: bool = False
  tie_embeddings: bool = True
  remat: bool | str = False
  dtype: Any = jnp.float32
  attention: str = "bidirectional"
  block_length: int | None = None
  attention_impl: str = "auto"

  def __repr__(self) -> str:
    # Bidirectional configs print as they did before `attention` existed:
    # checkpoint fingerprints hold this repr, and older runs must still resume.
    skip = ("attention", "block_length") if self.attention == "bidirectional" else ()
    return config_repr(self, skip)

  def __post_init__(self):
    for name in ("vocab_size", "max_length", "d_model", "num_layers", "num_heads",
                 "mlp_dim"):
      _check_positive_int(name, getattr(self, name))
    if (isinstance(self.mask_id, bool) or not isinstance(self.mask_id, numbers.Integral)
        or not 0 <= self.mask_id <= self.vocab_size):
      raise ValueError(f"TransformerConfig.mask_id must be an int in [0, vocab_size="
                       f"{self.vocab_size}], got {self.mask_id!r}")
    if self.d_model % self.num_heads:
      raise ValueError(f"TransformerConfig.d_model={self.d_model} must be divisible by "
                       f"num_heads={self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"TransformerConfig.d_model / num_heads = {self.head_dim} (the "
                       f"head dim) must be even for RoPE")
    if (isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, numbers.Real)
        or not self.rope_theta > 0):
      raise ValueError(f"TransformerConfig.rope_theta must be a positive number, got "
                       f"{self.rope_theta!r}")
    try:
      floating = jnp.issubdtype(jnp.dtype(self.dtype), jnp.floating)
    except TypeError:
      floating = False
    if not floating:
      raise ValueError(f"TransformerConfig.dtype must be a floating dtype, got "
                       f"{self.dtype!r}")
    if self.attention not in ATTENTION_KINDS:
      raise ValueError(f"TransformerConfig.attention must be one of {ATTENTION_KINDS}, "
                       f"got {self.attention!r}")
    if self.attention == "block_causal":
      _check_positive_int("block_length", self.block_length)
    elif self.block_length is not None:
      raise ValueError(f"TransformerConfig.block_length={self.block_length!r} is only "
                       f"used with attention='block_causal'; leave it None")
    if not isinstance(self.remat, bool) and not (isinstance(self.remat, str)
                                                 and self.remat in REMAT_POLICIES):
      raise ValueError(f"TransformerConfig.remat must be a bool or one of "
                       f"{tuple(REMAT_POLICIES)}, got {self.remat!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"TransformerConfig.attention_impl must be one of {ATTENTION_IMPLS}, "
                       f"got {self.attention_impl!r}")
    if self.attention_impl == "cudnn":
      problems = _cudnn_config_problems(self)
      if problems:
        raise ValueError(f"TransformerConfig.attention_impl='cudnn' cannot run this model: "
                         f"{'; '.join(problems)} (use 'auto' to fall back to XLA)")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def remat_policy(self) -> str:
    """The name in `REMAT_POLICIES` that `remat` means (a bool maps to "none" / "full")."""
    if isinstance(self.remat, bool):
      return "full" if self.remat else "none"
    return self.remat

  @property
  def num_embeddings(self) -> int:
    """Rows of the embedding table: `vocab_size`, plus one if the mask is appended."""
    return self.vocab_size + int(self.mask_id == self.vocab_size)


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
    raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")


def config_repr(config: TransformerConfig, skip: tuple[str, ...] = ()) -> str:
  """`Name(field=value, ...)` over the dataclass fields, leaving out `skip` and the
  fields added after checkpoints existed while at their defaults (`_NEW_FIELD_DEFAULTS`)."""
  fields = ", ".join(
      f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
      if f.name not in skip and not (f.name in _NEW_FIELD_DEFAULTS
                                     and getattr(config, f.name) == _NEW_FIELD_DEFAULTS[f.name]))
  return f"{type(config).__qualname__}({fields})"


def _cudnn_config_problems(config: TransformerConfig) -> list[str]:
  """What in the config itself rules out cuDNN flash attention (head dims up to 256
  pass here; the 128 limit before compute capability 9.0 is checked on the device)."""
  problems = []
  if jnp.dtype(config.dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
    problems.append(f"dtype {jnp.dtype(config.dtype).name} is not bfloat16 or float16")
  if config.head_dim % 8 or config.head_dim > 256:
    problems.append(f"head dim {config.head_dim} is not a multiple of 8 up to 256")
  return problems


def _gpu_compute_capability() -> tuple[int, int] | None:
  """(major, minor) of the default backend's first device if it is a CUDA GPU, else None."""
  if jax.default_backend() != "gpu":
    return None
  capability = getattr(jax.devices()[0], "compute_capability", "")
  try:
    major, minor = (int(part) for part in str(capability).split("."))
  except ValueError:  # e.g. ROCm's "gfx90a": not CUDA, no cuDNN
    return None
  return major, minor


def attention_implementation(config: TransformerConfig, length: int, masked: bool, *,
                             compute_capability: tuple[int, int] | None | str = "detect"
                             ) -> str:
  """The kernel of a full pass over `length` positions: `"xla"` or `"cudnn"`.

  Resolves `config.attention_impl` on the default backend ("auto": cuDNN where
  it can run, see `TransformerConfig.attention_impl`; XLA otherwise). A masked
  pass over an odd length runs on XLA with either "auto" or "cudnn": cuDNN's
  backward pass with a bias (the form our masks take) needs even lengths.

  Args:
    config: the model config.
    length: the number of query (and key) positions, static.
    masked: whether the pass has a mask.
    compute_capability: the CUDA device's (major, minor), None for a platform
      without CUDA; "detect" reads the default backend (tests pass others).

  Raises:
    ValueError: `attention_impl="cudnn"` on a platform or for a config cuDNN
      cannot run, naming why.
  """
  if config.attention_impl == "xla":
    return "xla"
  if compute_capability == "detect":
    compute_capability = _gpu_compute_capability()
  problems = _cudnn_config_problems(config)
  if compute_capability is None:
    problems.append(f"the default backend {jax.default_backend()!r} is not a CUDA GPU")
  else:
    if compute_capability < (8, 0):
      problems.append(f"compute capability {compute_capability} is below 8.0")
    if compute_capability < (9, 0) and config.head_dim > 128:
      problems.append(f"head dim {config.head_dim} exceeds 128 before compute capability 9.0")
  if problems and config.attention_impl == "cudnn":
    raise ValueError(f"attention_impl='cudnn' cannot run here: {'; '.join(problems)} "
                     f"(use 'auto' to fall back to XLA)")
  # cuDNN's backward pass with a bias (our masks) needs an even length: such a pass
  # (e.g. the length-1 pass that initializes the parameters) runs on XLA.
  return "xla" if problems or (masked and length % 2) else "cudnn"


def full_attention(config: TransformerConfig, q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array,
                   v_BxLxHxK: jax.Array, mask: jax.Array | None) -> jax.Array:
  """`jax.nn.dot_product_attention` with the implementation `attention_implementation`
  picks; `mask` bool, broadcastable to [B, heads, L, L] (None: attend everywhere).
  Returns [B, L, H, K].

  Raises:
    ValueError: `attention_impl="cudnn"` where cuDNN cannot run.
  """
  length = q_BxLxHxK.shape[-3]
  implementation = attention_implementation(config, length, mask is not None)
  if implementation == "cudnn" and mask is not None:
    mask = cudnn_mask(mask, length)
  return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=mask,
                                      implementation=implementation)


def cudnn_mask(mask: jax.Array, length: int) -> jax.Array:
  """`mask` (broadcastable to [B, heads, L, L]) broadcast along its query and key axes
  to `length`: cuDNN turns a mask into an additive bias whose last two axes must be
  whole. Its batch and heads axes keep their sizes (1 broadcasts in the kernel)."""
  mask = jnp.asarray(mask).reshape((1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))
  return jnp.broadcast_to(mask, (*mask.shape[:2], length, length))


def num_params(config: TransformerConfig) -> int:
  """The exact number of parameters of `Transformer(config)`.

  Embedding `E*D`; per block `4 D^2` (q, k, v, out) `+ 3 D F` (SwiGLU) `+ 2 D`
  (norm scales); final norm `D`; untied output `D V`; time MLP `2 (D^2 + D)`.
  """
  d, f = config.d_model, config.mlp_dim
  block = 4 * d * d + 3 * d * f + 2 * d
  total = config.num_embeddings * d + config.num_layers * block + d
  if not config.tie_embeddings:
    total += d * config.vocab_size
  if config.time_conditioning:
    total += 2 * (d * d + d)
  return total


def flops_per_token(config: TransformerConfig, length: int) -> int:
  """Training FLOPs (forward + backward) per token at sequence length `length`.

  The standard estimate `6 N + 12 num_layers length d_model` (as in PaLM's MFU):
  `N` counts the parameters used in matmuls -- the blocks' dense layers and the
  `d_model x vocab_size` output projection, not the embedding lookup, norm
  scales or the per-sequence time MLP -- each costing 2 FLOPs per token forward
  and 4 backward; the second term is the attention scores and the weighted sum
  of values (`2 * 2 * length * d_model` FLOPs per token and layer forward, no
  causal halving: bidirectional attention needs all of it, and block-causal
  attention computes all of it and masks), times 3 for training. A forward
  pass (sampling) costs a third of this.

  Raises:
    ValueError: `length` is not a positive int.
  """
  if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length <= 0:
    raise ValueError(f"length must be a positive int, got {length!r}")
  d, f = config.d_model, config.mlp_dim
  matmul_params = config.num_layers * (4 * d * d + 3 * d * f) + d * config.vocab_size
  return 6 * matmul_params + 12 * config.num_layers * length * d


def rope_rotation(positions: jax.Array, head_dim: int,
                  theta: float) -> tuple[jax.Array, jax.Array]:
  """The rotary embedding's (cos, sin) at `positions`, float32 `[..., 1, head_dim / 2]`.

  Feature pair `(x[i], x[i + K/2])` at position `m` is rotated by the angle
  `m * theta^(-2i/K)`. Computed once per forward pass and shared by every
  layer's queries and keys (`apply_rope`): inside a sampler's loop, where the
  positions are traced, XLA would otherwise evaluate the table per layer and
  per use, each a kernel of its own.

  Args:
    positions: the position of each token, e.g. `[L]`, or `[B, 1, L]` for
      per-row positions of `[B, C, L, H, K]` inputs.
    head_dim: `K`, even.
    theta: base wavelength.
  """
  half = head_dim // 2
  inv_freq_K2 = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_LxK2 = positions.astype(jnp.float32)[..., None] * inv_freq_K2
  return jnp.cos(angle_LxK2)[..., None, :], jnp.sin(angle_LxK2)[..., None, :]


def apply_rope(x_BxLxHxK: jax.Array, rotation: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotates queries or keys `[..., L, H, K]` by a `rope_rotation` of their positions
  (broadcastable to `[..., L, 1, K/2]`). Computed in float32; returned in `x`'s dtype."""
  cos_Lx1xK2, sin_Lx1xK2 = rotation
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos_Lx1xK2 - x2 * sin_Lx1xK2,
                             x2 * cos_Lx1xK2 + x1 * sin_Lx1xK2], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


def rope(x_BxLxHxK: jax.Array, positions_L: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding of queries or keys: `apply_rope` of `rope_rotation`.

  Feature pair `(x[i], x[i + K/2])` at position `m` is rotated by the angle
  `m * theta^(-2i/K)`, so `<rope(q, m), rope(k, n)>` depends on `m - n` only.
  Computed in float32; returned in the input dtype.

  Args:
    x_BxLxHxK: queries or keys, `[..., L, H, K]`; `K` must be even.
    positions_L: the position of each token, broadcastable to `x.shape[:-2]`
      (`[L]`, or e.g. `[B, 1, L]` for per-row positions of `[B, C, L, H, K]`).
    theta: base wavelength.

  Returns:
    The rotated array, shape and dtype of `x_BxLxHxK`.
  """
  return apply_rope(x_BxLxHxK, rope_rotation(positions_L, x_BxLxHxK.shape[-1], theta))


def timestep_embedding(t_B: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding float32[B, dim] of `1000 t` (`dim` even), periods up to 10^4."""
  half = dim // 2
  freq_H = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  arg_BxH = _TIME_SCALE * t_B.astype(jnp.float32)[:, None] * freq_H
  return jnp.concatenate([jnp.sin(arg_BxH), jnp.cos(arg_BxH)], axis=-1)


def project_logits(hidden_xD: jax.Array, unembed_VxD: jax.Array) -> jax.Array:
  """The output projection: float32 logits `[..., V]` of final hidden states `[..., D]`,
  multiplied in the hidden states' dtype and accumulated in float32."""
  return jnp.einsum("...d,vd->...v", hidden_xD, unembed_VxD.astype(hidden_xD.dtype),
                    preferred_element_type=jnp.float32)


def _dense(config: TransformerConfig, features, name: str, axis=-1) -> nn.DenseGeneral:
  return nn.DenseGeneral(features, axis=axis, use_bias=False, dtype=config.dtype,
                         param_dtype=jnp.float32, name=name)


def _norm(config: TransformerConfig, name: str) -> nn.RMSNorm:
  return nn.RMSNorm(epsilon=1e-6, dtype=config.dtype, param_dtype=jnp.float32, name=name)


@flax.struct.dataclass
class KVCache:
  """Every layer's keys and values for a batch of states: the context of `block_logits`.

  Every leaf has the batch as its leading axis, so rows can be selected with
  `jnp.where` like the states they were computed from.

  Attributes:
    keys_NxYxLxHxK: RoPE-rotated keys of the `Y = num_layers` layers, in the
      compute dtype.
    values_NxYxLxHxK: values, same shape and dtype.
    valid_NxL: bool, the non-padding positions of the cached states.
  """
  keys_NxYxLxHxK: jax.Array
  values_NxYxLxHxK: jax.Array
  valid_NxL: jax.Array


def attend_span(q_BxCxSxHxK: jax.Array, k_BxCxSxGxK: jax.Array, v_BxCxSxGxK: jax.Array,
                 span_mask: jax.Array, context_k_BxLxGxK: jax.Array,
                 context_v_BxLxGxK: jax.Array, context_mask: jax.Array) -> jax.Array:
  """Attention of `C` copies of a span over their own span and one shared context.

  One softmax over [context keys, own span keys], with the numerics of
  `jax.nn.dot_product_attention` (logits and softmax in float32). Keys and values
  may have fewer heads `G` than the queries' `H` (grouped-query attention: query
  head `h` reads key head `h // (H / G)`). The span mask is `[B, S, S]` for every
  copy or `[B, C, S, S]` per copy, the context mask `[B, L]` or `[B, C, L]` (copies
  whose spans lie at different places: `Transformer.copy_block_logits`). Returns
  `[B, C, S, H, K]`.

  Several copies attend to the context broadcast over them, never copied. One copy
  (a fused FeF round's packed row, `Transformer.extend_shared`) attends to the
  context and its span joined into one key sequence, as a full pass does: one
  attention instead of two halves and their join, 3-5% of a cached FeF answer on
  the 2-core CPU (BENCHMARKS.md, "Where the time goes").
  """
  b, c, s, h, k = q_BxCxSxHxK.shape
  groups = k_BxCxSxGxK.shape[3]
  span_mask_BxCxSxS = span_mask if span_mask.ndim == 4 else span_mask[:, None]
  context_mask_BxCxL = context_mask if context_mask.ndim == 3 else context_mask[:, None]
  if c == 1:
    length = context_k_BxLxGxK.shape[1]
    mask_BxSxN = jnp.concatenate(
        [jnp.broadcast_to(context_mask_BxCxL[:, 0, None, :], (b, s, length)),
         span_mask_BxCxSxS[:, 0]], axis=2)
    return jax.nn.dot_product_attention(
        q_BxCxSxHxK[:, 0], jnp.concatenate([context_k_BxLxGxK, k_BxCxSxGxK[:, 0]], axis=1),
        jnp.concatenate([context_v_BxLxGxK, v_BxCxSxGxK[:, 0]], axis=1),
        mask=mask_BxSxN[:, None], implementation="xla")[:, None]
  q = q_BxCxSxHxK.reshape(b, c, s, groups, h // groups, k)
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  scale = jnp.array(1.0 / math.sqrt(k), logits_dtype)
  large_negative = jnp.asarray(-0.7 * jnp.finfo(logits_dtype).max, logits_dtype)
  context_logits = jnp.einsum("bcsgrk,blgk->bcgrsl", q, context_k_BxLxGxK,
                              preferred_element_type=logits_dtype) * scale
  own_logits = jnp.einsum("bcsgrk,bctgk->bcgrst", q, k_BxCxSxGxK,
                          preferred_element_type=logits_dtype) * scale
  context_logits = jnp.where(context_mask_BxCxL[:, :, None, None, None, :],
                             context_logits, large_negative)
  own_logits = jnp.where(span_mask_BxCxSxS[:, :, None, None], own_logits, large_negative)
  probs = jax.nn.softmax(jnp.concatenate([context_logits, own_logits], axis=-1)
                         .astype(jnp.float32), axis=-1).astype(v_BxCxSxGxK.dtype)
  length = context_k_BxLxGxK.shape[1]
  out = (jnp.einsum("bcgrsl,blgk->bcsgrk", probs[..., :length], context_v_BxLxGxK)
         + jnp.einsum("bcgrst,bctgk->bcsgrk", probs[..., length:], v_BxCxSxGxK))
  return out.reshape(b, c, s, h, k)


class Attention(nn.Module):
  """Multi-head self-attention with RoPE on queries and keys.

  `rotation` is the `rope_rotation` of the tokens' positions. Full pass: `x` is
  `[B, L, D]` and `mask` broadcasts to `[B, heads, L, L]` (None: attend
  everywhere). Span pass (`context` given): `x` is `[B, C, S, D]`,
  `C` copies of `S` positions; `mask` `[B, S, S]` says which span keys each span
  query sees, and `context = (keys_BxLxHxK, values_BxLxHxK, mask_BxL)` adds
  cached keys shared by the copies. Both return the output and the (rotated
  keys, values) of their own tokens.
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, rotation: tuple[jax.Array, jax.Array],
               mask: jax.Array | None,
               context: tuple[jax.Array, jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    cfg = self.config
    heads = (cfg.num_heads, cfg.head_dim)
    q = apply_rope(_dense(cfg, heads, "query")(x), rotation)
    k = apply_rope(_dense(cfg, heads, "key")(x), rotation)
    v = _dense(cfg, heads, "value")(x)
    if context is None:
      out = full_attention(cfg, q, k, v, mask)
    else:
      out = attend_span(q, k, v, mask, *context)
    return _dense(cfg, cfg.d_model, "out", axis=(-2, -1))(out), (k, v)


class MLP(nn.Module):
  """SwiGLU: `W_down (silu(W_gate x) * W_up x)`."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    cfg = self.config
    gate_BxLxF = _dense(cfg, cfg.mlp_dim, "gate")(x_BxLxD)
    up_BxLxF = _dense(cfg, cfg.mlp_dim, "up")(x_BxLxD)
    return _dense(cfg, cfg.d_model, "down")(nn.silu(gate_BxLxF) * up_BxLxF)


class Block(nn.Module):
  """Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

  `rotation` is the `rope_rotation` of the tokens' positions. Returns the new
  stream and the attention's (keys, values); see `Attention`.
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, rotation: tuple[jax.Array, jax.Array],
               mask: jax.Array | None,
               context: tuple[jax.Array, jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    cfg = self.config
    attended, keys_values = Attention(cfg, name="attention")(
        _norm(cfg, "attention_norm")(x), rotation, mask, context)
    x = x + attended
    return x + MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x)), keys_values


class TimeEmbedding(nn.Module):
  """`t_B -> Dense(silu(Dense(sinusoid(t))))`, float[B, D], added to every position."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, t_B: jax.Array) -> jax.Array:
    cfg = self.config
    dense = lambda name: nn.Dense(cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                                  name=name)
    h_BxD = nn.silu(dense("dense_0")(timestep_embedding(t_B, cfg.d_model)))
    return dense("dense_1")(h_BxD)


def _check_inputs(config: TransformerConfig, tokens_BxL: Any, valid_BxL: Any,
                  t_B: Any) -> None:
  """Shape and dtype checks (static, so they run under jit too)."""
  shape = getattr(tokens_BxL, "shape", None)
  if (shape is None or len(shape) != 2
      or not jnp.issubdtype(tokens_BxL.dtype, jnp.integer)):
    raise ValueError(f"tokens_BxL must be an integer array of shape [B, L], got "
                     f"{getattr(tokens_BxL, 'dtype', type(tokens_BxL))}{shape}")
  if shape[1] > config.max_length:
    raise ValueError(f"sequence length {shape[1]} exceeds max_length={config.max_length}")
  if valid_BxL is not None and (valid_BxL.shape != shape or valid_BxL.dtype != jnp.bool_):
    raise ValueError(f"valid_BxL must be bool{list(shape)}, got "
                     f"{valid_BxL.dtype}{list(valid_BxL.shape)}")
  if config.time_conditioning and (t_B is None or jnp.shape(t_B) != shape[:1]):
    raise ValueError(f"time_conditioning=True needs t_B of shape ({shape[0]},), got "
                     f"{None if t_B is None else jnp.shape(t_B)}")


def _check_cacheable(config: TransformerConfig) -> None:
  if config.time_conditioning:
    raise ValueError("cached evaluation needs time_conditioning=False: the time embedding "
                     "depends on the masks of the whole sequence, so cached keys and "
                     "values would not match the copies evaluated against them")


def check_span_inputs(valid_NxL: jax.Array, tokens_NxCxS: Any, start_N: Any,
                      extra: int = 0, why_extra: str = "") -> None:
  """Shape and dtype checks of a `block_logits` call (static, so they run under jit too).

  Args:
    valid_NxL: the cache's valid mask (gives its batch `N` and length `L`).
    tokens_NxCxS: the span tokens, which must be int[N, C, S] with `S + extra <= L`.
    start_N: the span starts, which must be int[N].
    extra: positions evaluated beyond the span (Dream's shifted logits need one).
    why_extra: what the message says about them.

  Raises:
    ValueError: naming the argument and the shape it needs.
  """
  shape = getattr(tokens_NxCxS, "shape", None)
  if (shape is None or len(shape) != 3
      or not jnp.issubdtype(tokens_NxCxS.dtype, jnp.integer)):
    raise ValueError(f"tokens_NxCxS must be an integer array of shape [N, C, S], got "
                     f"{getattr(tokens_NxCxS, 'dtype', type(tokens_NxCxS))}{shape}")
  batch, length = valid_NxL.shape
  if shape[0] != batch or shape[2] + extra > length:
    needs = f"S + {extra} <= its length {length}{why_extra}" if extra else (
        f"S <= its length {length}")
    raise ValueError(f"tokens_NxCxS{list(shape)} needs N equal to the cache's batch "
                     f"{batch} and {needs}")
  if jnp.shape(start_N) != (batch,) or not jnp.issubdtype(jnp.result_type(start_N),
                                                          jnp.integer):
    raise ValueError(f"start_N must be an integer array of shape ({batch},), got "
                     f"{jnp.result_type(start_N)}{list(jnp.shape(start_N))}")


def _full_mask(config: TransformerConfig, valid_BxL: jax.Array | None,
               length: int) -> jax.Array | None:
  """The full pass's attention mask, broadcastable to [B, heads, L, L]; None: no mask."""
  keys_Bx1x1xL = None if valid_BxL is None else valid_BxL[:, None, None, :]
  if config.attention == "bidirectional":
    return keys_Bx1x1xL
  block_L = jnp.arange(length) // config.block_length
  causal_1x1xLxL = (block_L[None, :] <= block_L[:, None])[None, None]
  return causal_1x1xLxL if keys_Bx1x1xL is None else causal_1x1xLxL & keys_Bx1x1xL


def _span_masks(config: TransformerConfig, cache: KVCache, start_B: jax.Array,
                span: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(positions int32[B, S], span mask bool[B, S, S], context mask bool[B, L]).

  Span keys are seen when valid (and, block-causally, not in a later block);
  context keys when valid and outside the span (block-causally: before
  `start`), so the cached span itself is replaced by each copy's.
  """
  start_B = start_B.astype(jnp.int32)
  positions_BxS = start_B[:, None] + jnp.arange(span, dtype=jnp.int32)
  span_valid_BxS = jax.vmap(lambda v, s: jax.lax.dynamic_slice(v, (s,), (span,)))(
      cache.valid_NxL, start_B)
  span_mask_BxSxS = jnp.broadcast_to(span_valid_BxS[:, None, :], (*span_valid_BxS.shape, span))
  if config.attention == "block_causal":
    block_BxS = positions_BxS // config.block_length
    span_mask_BxSxS = span_mask_BxSxS & (block_BxS[:, None, :] <= block_BxS[:, :, None])
  return positions_BxS, span_mask_BxSxS, context_mask(config.attention, cache.valid_NxL,
                                                      start_B, span)


def _written(cache: KVCache, keys_values: list[tuple[jax.Array, jax.Array]],
             pieces: tuple[tuple[int, int, jax.Array], ...], hidden: jax.Array) -> KVCache:
  """`cache` with copy 0's keys and values of a span pass written in.

  `keys_values` holds every layer's (keys, values) `[B, C, N, ...]` of the pass;
  each of `pieces`, `(offset, size, start_B)`, writes copy 0's positions
  `[offset, offset + size)` to `[start_b, start_b + size)` of row `b`, in order.
  `hidden` is the pass's final hidden state `[B, ...]`, which every layer's
  attention over the old cache feeds.
  """
  # The written values are made to depend on `hidden` by adding an exact zero (a
  # finite number times 0, which XLA cannot fold). Without that, nothing in the data
  # flow orders the pass's reads of the old cache before the in-place write, and
  # inside a sampler's loop XLA copies the whole cache twice per call to keep the old
  # one readable (an optimization barrier does not order them: XLA:CPU drops it before
  # it inserts copies).
  zero_B = 0 * jnp.nan_to_num(hidden.reshape(hidden.shape[0], -1)[:, 0])

  def write(cache_NxYxLxHxK, layers):
    new_BxYxNxHxK = jnp.stack([entry[:, 0] for entry in layers], axis=1)
    new_BxYxNxHxK = new_BxYxNxHxK + zero_B.astype(new_BxYxNxHxK.dtype)[:, None, None, None,
                                                                         None]
    for offset, size, start_B in pieces:
      cache_NxYxLxHxK = jax.vmap(lambda old, new, start: jax.lax.dynamic_update_slice_in_dim(
          old, new.astype(old.dtype), start, axis=1))(
              cache_NxYxLxHxK, new_BxYxNxHxK[:, :, offset:offset + size], start_B)
    return cache_NxYxLxHxK

  return KVCache(keys_NxYxLxHxK=write(cache.keys_NxYxLxHxK, [k for k, _ in keys_values]),
                 values_NxYxLxHxK=write(cache.values_NxYxLxHxK, [v for _, v in keys_values]),
                 valid_NxL=cache.valid_NxL)


def context_mask(attention: str, valid_NxL: jax.Array, start_N: jax.Array,
                 span: int) -> jax.Array:
  """bool[N, L]: the cached keys a span `[start, start + span)` attends to.

  Block-causal: the valid keys before `start`. Bidirectional: the valid keys
  on both sides of the span (a prefix and suffix, "dual" cache).
  """
  position_1xL = jnp.arange(valid_NxL.shape[1])[None, :]
  before_NxL = position_1xL < start_N[:, None]
  if attention == "block_causal":
    return valid_NxL & before_NxL
  return valid_NxL & (before_NxL | (position_1xL >= start_N[:, None] + span))


class Transformer(nn.Module):
  """The denoiser network: int32[B, L] token ids -> float32[B, L, vocab_size] logits.

  Token ids must lie in `[0, vocab_size) U {mask_id}`. This cannot be checked
  under jit; an id outside the embedding table reads NaN (JAX's out-of-bounds
  gather fill), so its row's logits are NaN (which `fef_jax.sample` reports).
  `encode` and `block_logits` (call them with `apply(..., method=...)`) are the
  cached evaluation described in the module docstring.
  """
  config: TransformerConfig

  def __call__(self, tokens_BxL: jax.Array, valid_BxL: jax.Array | None = None,
               t_B: jax.Array | None = None) -> jax.Array:
    """Logits of every position.

    Args:
      tokens_BxL: int[B, L] token ids, `L <= max_length`.
      valid_BxL: optional bool[B, L]; keys at invalid (padding) positions are
        never attended to, so valid positions' logits do not depend on the
        tokens there. Logits at invalid positions are finite and meaningless.
        RoPE positions are `0..L-1` regardless of padding.
      t_B: diffusion times float[B], required with `time_conditioning` and
        ignored without it.

    Returns:
      float32[B, L, vocab_size] logits.

    Raises:
      ValueError: tokens not an integer [B, L] array, `L > max_length`,
        `valid_BxL` not bool[B, L], or `t_B` missing or not [B] when needed.
    """
    cfg = self.config
    _check_inputs(cfg, tokens_BxL, valid_BxL, t_B)
    length = tokens_BxL.shape[1]
    logits_BxLxV, _, _ = self._forward(tokens_BxL, t_B, jnp.arange(length),
                                       _full_mask(cfg, valid_BxL, length))
    return logits_BxLxV

  def hidden(self, tokens_BxL: jax.Array, valid_BxL: jax.Array | None = None,
             t_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The full pass, also returning the final hidden states (what a head reads).

    Args:
      tokens_BxL, valid_BxL, t_B: as for `__call__`.

    Returns:
      (float32[B, L, vocab_size] logits, the same as `__call__`'s; the
      final-normed hidden states [B, L, d_model] in the compute dtype, from
      which the logits are projected).

    Raises:
      ValueError: bad inputs as for `__call__`.
    """
    cfg = self.config
    _check_inputs(cfg, tokens_BxL, valid_BxL, t_B)
    length = tokens_BxL.shape[1]
    logits_BxLxV, _, hidden_BxLxD = self._forward(tokens_BxL, t_B, jnp.arange(length),
                                                  _full_mask(cfg, valid_BxL, length))
    return logits_BxLxV, hidden_BxLxD

  def features(self, tokens_BxL: jax.Array, valid_BxL: jax.Array | None = None,
               t_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The full pass without its output projection: what a loss that projects the
    positions in chunks reads (`fef_jax.losses.chunked_masked_cross_entropy`).

    Args:
      tokens_BxL, valid_BxL, t_B: as for `__call__`.

    Returns:
      (the final-normed hidden states [B, L, d_model] in the compute dtype, the
      float32 output projection [vocab_size, d_model]);
      `project_logits(hidden, projection)` is `__call__`'s logits.

    Raises:
      ValueError: bad inputs as for `__call__`.
    """
    cfg = self.config
    _check_inputs(cfg, tokens_BxL, valid_BxL, t_B)
    length = tokens_BxL.shape[1]
    _, _, hidden_BxLxD = self._forward(tokens_BxL, t_B, jnp.arange(length),
                                       _full_mask(cfg, valid_BxL, length), project=False)
    return hidden_BxLxD, self.output_tables()[1]

  def project_hidden(self, hidden_xD: jax.Array) -> jax.Array:
    """float32 logits `[..., vocab_size]` of final-normed hidden states `[..., d_model]`
    (`features`, or `encode`, `block_logits`, `extend` and `extend_shared` without
    `project`): the model's output projection, row by row."""
    return project_logits(hidden_xD, self.output_tables()[1])

  def output_tables(self) -> tuple[jax.Array, jax.Array]:
    """(float32 input embedding table [num_embeddings, d_model], output projection
    [vocab_size, d_model]): the parameters a head shares with the model. Needs
    the parameters to exist (call it after a forward pass when initializing)."""
    params = self.variables["params"]
    embed_ExD = params["embed"]["embedding"]
    unembed_VxD = (embed_ExD[:self.config.vocab_size] if self.config.tie_embeddings
                   else params["unembed"])
    return embed_ExD, unembed_VxD

  def encode(self, tokens_BxL: jax.Array, valid_BxL: jax.Array | None = None,
             project: bool = True) -> tuple[jax.Array, KVCache]:
    """The full pass, also returning every layer's keys and values.

    Args:
      tokens_BxL, valid_BxL: as for `__call__` (no time: see Raises).
      project: static; False gives the final-normed hidden states in place of the
        logits (see `block_logits`).

    Returns:
      (float32[B, L, vocab_size] logits, the same as `__call__`'s (hidden states
      without `project`); the `KVCache` of the `B` states, `valid_NxL` all True
      when `valid_BxL` is None).

    Raises:
      ValueError: bad inputs as for `__call__`, or a time-conditioned model.
    """
    cfg = self.config
    _check_cacheable(cfg)
    _check_inputs(cfg, tokens_BxL, valid_BxL, None)
    length = tokens_BxL.shape[1]
    logits_BxLxV, keys_values, hidden_BxLxD = self._forward(
        tokens_BxL, None, jnp.arange(length), _full_mask(cfg, valid_BxL, length),
        project=project)
    valid_BxL = jnp.ones(tokens_BxL.shape, bool) if valid_BxL is None else valid_BxL
    return logits_BxLxV if project else hidden_BxLxD, KVCache(
        keys_NxYxLxHxK=jnp.stack([k for k, _ in keys_values], axis=1),
        values_NxYxLxHxK=jnp.stack([v for _, v in keys_values], axis=1),
        valid_NxL=valid_BxL)

  def block_logits(self, cache: KVCache, tokens_BxCxS: jax.Array,
                   start_B: jax.Array, project: bool = True) -> jax.Array:
    """Logits of the span `[start, start + S)` of `C` copies of each cached state.

    Copy `c` of row `b` is the cached state `b` with positions
    `start_b .. start_b + S - 1` replaced by `tokens_BxCxS[b, c]`; the span
    attends to its own valid keys and to the cache's valid keys outside it
    (`context_mask`): block-causally, those before `start` and its own keys of
    blocks up to the query's; bidirectionally, those on both sides. Validity of
    the span's positions is read from the cache (padding is not re-decided).
    Exact (equal to `__call__` on each copy, at the span) for a block-causal
    model when `start` is a multiple of `block_length`, and for a bidirectional
    one when the copy's span equals the cached state's; otherwise an
    approximation (see the module docstring).

    Args:
      cache: a `KVCache` of `B` states of length `L` (from `encode`).
      tokens_BxCxS: int[B, C, S] span tokens, static `S <= L`.
      start_B: int[B] span starts, traced; `start + S <= L` is required and not
        checked (a later start is clamped by `lax.dynamic_slice`).
      project: static; False returns the final-normed hidden states
        [B, C, S, d_model] (compute dtype) instead, which `project_hidden` maps to
        these logits: a caller that reads the logits of a few positions projects
        only those.

    Returns:
      float32[B, C, S, vocab_size] logits (hidden states without `project`).

    Raises:
      ValueError: tokens not an integer [B, C, S] array, a batch that is not
        the cache's, `S > L`, `start_B` not int[B], or a time-conditioned model.
    """
    logits_BxCxSxV, _, hidden_BxCxSxD = self._span_pass(cache, tokens_BxCxS, start_B,
                                                        project)
    return logits_BxCxSxV if project else hidden_BxCxSxD

  def copy_block_logits(self, cache: KVCache, tokens_BxCxS: jax.Array,
                        start_BxC: jax.Array, project: bool = True) -> jax.Array:
    """`block_logits` with a span start per copy: copy `c` of row `b` is the cached
    state `b` with positions `start_bc .. start_bc + S - 1` set to `tokens_BxCxS[b, c]`,
    its span attending to the cache's keys before `start_bc` (block-causally; on
    both sides bidirectionally), all copies reading the one cache of their row.
    Exact where `block_logits` is (`cache="prefix"`, `fef_jax.samplers.shared_prefix`).

    Args:
      cache: a `KVCache` of `B` states of length `L` (from `encode`).
      tokens_BxCxS: int[B, C, S] span tokens, static `S <= L`.
      start_BxC: int[B, C] span starts, traced; `start + S <= L` is required and not
        checked.
      project: static; False returns the hidden states (see `block_logits`).

    Returns:
      float32[B, C, S, vocab_size] logits (hidden states without `project`).

    Raises:
      ValueError: tokens not an integer [B, C, S] array, a batch that is not the
        cache's, `S > L`, `start_BxC` not int[B, C], or a time-conditioned model.
    """
    cfg = self.config
    _check_cacheable(cfg)
    # The tokens and the cache as for `block_logits` (whose start is one per row).
    check_span_inputs(cache.valid_NxL, tokens_BxCxS,
                      jnp.zeros(cache.valid_NxL.shape[:1], jnp.int32))
    if (jnp.shape(start_BxC) != tuple(tokens_BxCxS.shape[:2])
        or not jnp.issubdtype(jnp.result_type(start_BxC), jnp.integer)):
      raise ValueError(f"start_BxC must be an integer array of shape "
                       f"{tuple(tokens_BxCxS.shape[:2])}, got "
                       f"{jnp.result_type(start_BxC)}{list(jnp.shape(start_BxC))}")
    positions_BxCxS, span_mask_BxCxSxS, context_mask_BxCxL = jax.vmap(
        lambda start_B: _span_masks(cfg, cache, start_B, tokens_BxCxS.shape[2]),
        in_axes=1, out_axes=1)(start_BxC)
    logits_BxCxSxV, _, hidden_BxCxSxD = self._forward(
        tokens_BxCxS, None, positions_BxCxS, span_mask_BxCxSxS,
        (cache.keys_NxYxLxHxK, cache.values_NxYxLxHxK, context_mask_BxCxL), project)
    return logits_BxCxSxV if project else hidden_BxCxSxD

  def block_hidden(self, cache: KVCache, tokens_BxCxS: jax.Array,
                   start_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`block_logits`, also returning the span's final hidden states (what a head reads).

    Args:
      cache, tokens_BxCxS, start_B: as for `block_logits`.

    Returns:
      (float32[B, C, S, vocab_size] logits, the same as `block_logits`'; the
      final-normed hidden states [B, C, S, d_model] in the compute dtype, equal
      to `hidden`'s at the span of each copy whenever `block_logits` is exact).

    Raises:
      ValueError: bad inputs as for `block_logits`.
    """
    logits_BxCxSxV, _, hidden_BxCxSxD = self._span_pass(cache, tokens_BxCxS, start_B)
    return logits_BxCxSxV, hidden_BxCxSxD

  def extend(self, cache: KVCache, tokens_BxCxS: jax.Array,
             start_B: jax.Array, project: bool = True) -> tuple[jax.Array, KVCache]:
    """`block_logits`, and the cache with the span's keys and values set to copy 0's.

    What moving a block-causal cache forward needs: with the span starting at
    the previous window and ending with the next one, copy 0 (the finished
    state) brings the cache up to date before the next window, at `C * S`
    positions instead of re-encoding whole sequences.

    Args:
      cache, tokens_BxCxS, start_B, project: as for `block_logits`.

    Returns:
      (float32[B, C, S, vocab_size] logits, as `block_logits`; the `KVCache`
      with positions `[start_b, start_b + S)` of row `b` holding copy 0's keys
      and values, the rest unchanged). For a block-causal model and `start` a
      multiple of `block_length`, the written keys and values are the full
      pass's of the cached state with the span replaced by copy 0.

    Raises:
      ValueError: bad inputs as for `block_logits`.
    """
    logits_BxCxSxV, keys_values, hidden_BxCxSxD = self._span_pass(cache, tokens_BxCxS,
                                                                  start_B, project)
    return (logits_BxCxSxV if project else hidden_BxCxSxD,
            _written(cache, keys_values, ((0, tokens_BxCxS.shape[2], start_B),),
                     hidden_BxCxSxD))

  def extend_shared(self, cache: KVCache, shared_BxP: jax.Array, tokens_BxCxT: jax.Array,
                    shared_start_B: jax.Array, start_B: jax.Array,
                    tail_BxR: jax.Array | None = None, tail_start_B: jax.Array | None = None,
                    tail_copy: int = 0, project: bool = True
                    ) -> tuple[jax.Array, jax.Array | None, KVCache]:
    """`extend` of `C` copies that agree on `P` positions (and `R` more), those computed once.

    Copy `c` of row `b` is the cached state with positions `[shared_start_b,
    shared_start_b + P)` set to `shared_BxP[b]` and `[start_b, start_b + T)` to
    `tokens_BxCxT[b, c]`. One pass over `P + C T (+ R)` positions gives each copy's
    logits at its `T` positions, as `extend` of the copies over a span holding
    both ranges would (up to float round-off), without evaluating the shared
    positions `C` times: what a fused FeF round needs, whose copies share the
    decided block before their window (`fef_jax.samplers.cache`).

    The optional tail is `R` more positions `[tail_start_b, tail_start_b + R)`
    that every copy holds as `tail_BxR[b]`, evaluated once, as copy `tail_copy`
    sees them: its logits are that copy's there (the next block's drafts of a
    fused round come from one copy, so the block after the window need not be
    evaluated in every copy). It is exact when its range is disjoint from the
    others and from the cached keys seen (it starts at or after
    `min(shared_start, start)`); otherwise its logits are finite but
    unspecified. Its keys and values are not written, and shared positions
    after it do not see it.

    Block-causal models only. The shared range must end where the copies' begins
    (`shared_start + P == start`) or begin where it ends (`start + T ==
    shared_start`, blocks no copy sees); cached keys are seen before
    `min(shared_start, start)` only. The shared positions' keys and values are
    those of copy 0's state.

    Args:
      cache: a `KVCache` of `B` states of length `L`.
      shared_BxP: int[B, P] the shared positions' tokens.
      tokens_BxCxT: int[B, C, T] each copy's tokens.
      shared_start_B, start_B: int[B] where they go (traced; not checked against
        each other, `+ P` and `+ T` must be `<= L`).
      tail_BxR: optional int[B, R], the tail's tokens.
      tail_start_B: int[B] where the tail goes (`+ R <= L`); with `tail_BxR` only.
      tail_copy: static, in `[0, C)`: the copy the tail belongs to.
      project: static; False gives the final-normed hidden states (compute
        dtype, `d_model` features) in place of both logits (see `block_logits`).

    Returns:
      (float32[B, C, T, vocab_size] logits; float32[B, R, vocab_size] the tail's
      logits, None without a tail; the `KVCache` with the shared positions' keys
      and values and copy 0's written, the rest unchanged).

    Raises:
      ValueError: bad inputs as for `block_logits` (for the tail too), a tail
        without its start, `tail_copy` not in `[0, C)`, or a bidirectional model.
    """
    cfg = self.config
    _check_cacheable(cfg)
    if cfg.attention != "block_causal":
      raise ValueError("extend_shared needs a block-causal model (its copies must not "
                       f"see later positions), got attention={cfg.attention!r}")
    check_span_inputs(cache.valid_NxL, tokens_BxCxT, start_B)
    check_span_inputs(cache.valid_NxL, shared_BxP[:, None, :], shared_start_B)
    batch, copies, length_t = tokens_BxCxT.shape
    length_p = shared_BxP.shape[1]
    pieces_BxN = [shared_BxP, tokens_BxCxT.reshape(batch, copies * length_t)]
    positions = [shared_start_B[:, None] + jnp.arange(length_p),
                 jnp.tile(start_B[:, None] + jnp.arange(length_t), (1, copies))]
    # Segment 0 is shared: every query sees it; a copy's queries see their own segment,
    # and the shared queries copy 0's (the state whose keys and values are written).
    segments = [np.zeros(length_p, np.int32),
                np.repeat(np.arange(1, copies + 1, dtype=np.int32), length_t)]
    if tail_BxR is not None:
      if tail_start_B is None:
        raise ValueError("a tail needs tail_start_B")
      try:
        check_span_inputs(cache.valid_NxL, tail_BxR[:, None, :], tail_start_B)
      except ValueError as e:
        raise ValueError(f"the tail (tail_BxR as [N, 1, R], tail_start_B as start_N): {e}"
                         ) from e
      if not (isinstance(tail_copy, int) and 0 <= tail_copy < copies):
        raise ValueError(f"tail_copy must be an int in [0, {copies}), got {tail_copy!r}")
      pieces_BxN.append(tail_BxR)
      positions.append(tail_start_B[:, None] + jnp.arange(tail_BxR.shape[1]))
      segments.append(np.full(tail_BxR.shape[1], copies + 1, np.int32))
    packed_BxN = jnp.concatenate(pieces_BxN, axis=1)
    positions_BxN = jnp.concatenate(positions, axis=1).astype(jnp.int32)
    segment_N = np.concatenate(segments)
    # The tail's queries also see the segment of the copy it belongs to.
    seen_NxN = ((segment_N[None, :] == 0) | (segment_N[None, :] == segment_N[:, None])
                | ((segment_N[:, None] == 0) & (segment_N[None, :] == 1))
                | ((segment_N[:, None] == copies + 1) & (segment_N[None, :] == tail_copy + 1)))
    block_BxN = positions_BxN // cfg.block_length
    mask_BxNxN = (jnp.take_along_axis(cache.valid_NxL, positions_BxN, axis=1)[:, None, :]
                  & seen_NxN[None] & (block_BxN[:, None, :] <= block_BxN[:, :, None]))
    context_mask_BxL = context_mask(cfg.attention, cache.valid_NxL,
                                    jnp.minimum(shared_start_B, start_B), 0)
    logits_Bx1xNxV, keys_values, hidden_Bx1xNxD = self._forward(
        packed_BxN[:, None, :], None, positions_BxN[:, None, :], mask_BxNxN,
        (cache.keys_NxYxLxHxK, cache.values_NxYxLxHxK, context_mask_BxL), project=project)
    out_Bx1xNxF = logits_Bx1xNxV if project else hidden_Bx1xNxD
    copies_end = length_p + copies * length_t
    out_BxCxTxF = out_Bx1xNxF[:, 0, length_p:copies_end].reshape(batch, copies, length_t, -1)
    tail_BxRxF = None if tail_BxR is None else out_Bx1xNxF[:, 0, copies_end:]
    # The packed row holds the shared positions, then copy 0's.
    return out_BxCxTxF, tail_BxRxF, _written(
        cache, keys_values, ((0, length_p, shared_start_B), (length_p, length_t, start_B)),
        hidden_Bx1xNxD)

  def _span_pass(self, cache: KVCache, tokens_BxCxS: jax.Array, start_B: jax.Array,
                 project: bool = True
                 ) -> tuple[jax.Array | None, list[tuple[jax.Array, jax.Array]], jax.Array]:
    cfg = self.config
    _check_cacheable(cfg)
    check_span_inputs(cache.valid_NxL, tokens_BxCxS, start_B)
    positions_BxS, span_mask_BxSxS, context_mask_BxL = _span_masks(
        cfg, cache, start_B, tokens_BxCxS.shape[2])
    return self._forward(
        tokens_BxCxS, None, positions_BxS[:, None, :], span_mask_BxSxS,
        (cache.keys_NxYxLxHxK, cache.values_NxYxLxHxK, context_mask_BxL), project)

  @nn.compact
  def _forward(self, tokens: jax.Array, t_B: jax.Array | None, positions: jax.Array,
               mask: jax.Array | None,
               context: tuple[jax.Array, jax.Array, jax.Array] | None = None,
               project: bool = True
               ) -> tuple[jax.Array | None, list[tuple[jax.Array, jax.Array]], jax.Array]:
    """The network on `[B, L]` tokens, or on `[B, C, S]` span copies with a `context`
    of stacked layer keys and values `[B, Y, L, H, K]` and a key mask `[B, L]`.

    Returns:
      (float32 logits `[..., vocab_size]`, None when not `project`; every layer's
      (keys, values) of `tokens`; the final-normed hidden states `[..., d_model]`
      the logits are projected from).
    """
    cfg = self.config
    embed = nn.Embed(cfg.num_embeddings, cfg.d_model, embedding_init=_EMBED_INIT,
                     dtype=cfg.dtype, param_dtype=jnp.float32, name="embed")
    x = embed(tokens)
    if cfg.time_conditioning:
      x = x + TimeEmbedding(cfg, name="time")(t_B)[:, None, :]
    policy = cfg.remat_policy
    block_cls = Block if policy == "none" else nn.remat(Block, policy=REMAT_POLICIES[policy])
    keys_values = []
    rotation = rope_rotation(positions, cfg.head_dim, cfg.rope_theta)
    for i in range(cfg.num_layers):
      layer_context = None if context is None else (
          context[0][:, i], context[1][:, i], context[2])
      x, layer_keys_values = block_cls(cfg, name=f"block_{i}")(x, rotation, mask,
                                                               layer_context)
      keys_values.append(layer_keys_values)
    x = _norm(cfg, "final_norm")(x)
    if cfg.tie_embeddings:
      unembed_VxD = embed.embedding[:cfg.vocab_size]
    else:
      unembed_VxD = self.param("unembed", nn.initializers.lecun_normal(),
                               (cfg.vocab_size, cfg.d_model), jnp.float32)
    logits = project_logits(x, unembed_VxD) if project else None
    return logits, keys_values, x


def init_params(config: TransformerConfig, key: jax.Array) -> Any:
  """Freshly initialized float32 parameters of `Transformer(config)`, on the default device.

  Computed in one jitted call on the host's CPU, where it compiles in seconds rather
  than the minute XLA:GPU takes (`fef_jax.models.host_init`); the values do not
  depend on where they are computed.
  """
  return host_init.computed_on_host(functools.partial(_init_params, config), key)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(config: TransformerConfig, key: jax.Array) -> Any:
  tokens_1x1 = jnp.full((1, 1), config.mask_id, jnp.int32)
  t_1 = jnp.ones((1,), jnp.float32) if config.time_conditioning else None
  return Transformer(config).init(key, tokens_1x1, None, t_1)["params"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
  """`logits_fn(tokens_NxL) -> float32[N, L, vocab_size]` for `fef_jax.sample`.

  Hashed by identity, so it can be a static argument of `jax.jit`. It is also
  a pytree whose leaves are the parameters (`model` and `valid_fn` are static):
  `fef_jax.sample` passes them to its compiled program as arguments, so every
  `Denoiser` of one model and `valid_fn` (a new checkpoint, the parameters of
  a later training step) reuses one compiled sampler, and compiling it does
  not embed the parameters as constants. A `valid_fn` compares by value only
  if it is hashed by value (`fef_jax.generate.left_padding_valid_fn`); a new
  lambda each time compiles anew.

  Attributes:
    model: the `Transformer`.
    params: its parameters (the `"params"` collection).
    valid_fn: optional `tokens_NxL -> bool[N, L]` marking non-padding
      positions (e.g. `lambda x: x != pad_id`); default: all valid.

  With `time_conditioning`, the time given to the model is the masked fraction
  of the valid positions: under the linear schedule, the `t` at which that
  fraction is the expected one.

  It also offers the block-local interface that `fef_jax.sample(...,
  cache="exact" | "approximate")` uses (`exact_cache`, `block_length`,
  `encode`, `block_logits`; see `fef_jax.samplers.cache`).
  """
  model: Transformer = dataclasses.field(metadata={"static": True})
  params: Any
  valid_fn: Callable[[jax.Array], jax.Array] | None = dataclasses.field(
      default=None, metadata={"static": True})

  def _conditioning(self, tokens_NxL: jax.Array) -> tuple[jax.Array | None, jax.Array | None]:
    """(valid_NxL or None, t_N or None): what the model is given besides the tokens."""
    cfg = self.model.config
    valid_NxL = None if self.valid_fn is None else self.valid_fn(tokens_NxL)
    t_N = None
    if cfg.time_conditioning:
      counted_NxL = (jnp.ones(tokens_NxL.shape, bool) if valid_NxL is None
                     else valid_NxL)
      masked_N = jnp.sum((tokens_NxL == cfg.mask_id) & counted_NxL, axis=1)
      t_N = masked_N / jnp.maximum(jnp.sum(counted_NxL, axis=1), 1)
    return valid_NxL, t_N

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    return self.model.apply({"params": self.params}, tokens_NxL,
                            *self._conditioning(tokens_NxL))

  def hidden(self, tokens_NxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(float32[N, L, vocab_size] logits, as `__call__`; hidden states [N, L, d_model])."""
    return self.model.apply({"params": self.params}, tokens_NxL,
                            *self._conditioning(tokens_NxL), method="hidden")

  def features(self, tokens_NxL: jax.Array) -> jax.Array:
    """Hidden states [N, L, d_model] (compute dtype) that `project_hidden` maps to
    `__call__`'s logits: `__call__` without its output projection, for callers that
    read the logits of a few positions (FeF's rounds over whole copies)."""
    return self.model.apply({"params": self.params}, tokens_NxL,
                            *self._conditioning(tokens_NxL), method="features")[0]

  def project_hidden(self, hidden_xD: jax.Array) -> jax.Array:
    """float32 logits `[..., vocab_size]` of hidden states `[..., d_model]` from
    `features`, or from `encode`, `block_logits`, `extend` or `extend_shared` with
    `project=False`."""
    return self.model.apply({"params": self.params}, hidden_xD, method="project_hidden")

  @property
  def block_length(self) -> int | None:
    """The model's attention block length in positions (None: bidirectional)."""
    return self.model.config.block_length

  @property
  def exact_cache(self) -> bool:
    """Whether `block_logits` equals the full call: block-causal, no time conditioning."""
    cfg = self.model.config
    return cfg.attention == "block_causal" and not cfg.time_conditioning

  def encode(self, tokens_NxL: jax.Array, project: bool = True) -> tuple[jax.Array, KVCache]:
    """(float32[N, L, vocab_size] logits, as `__call__` (hidden states without
    `project`); the `KVCache` of the states).

    Raises:
      ValueError: a time-conditioned model (see `Transformer.encode`).
    """
    valid_NxL = None if self.valid_fn is None else self.valid_fn(tokens_NxL)
    return self.model.apply({"params": self.params}, tokens_NxL, valid_NxL, project,
                            method="encode")

  def block_logits(self, cache: KVCache, tokens_NxCxS: jax.Array,
                   start_N: jax.Array, project: bool = True) -> jax.Array:
    """float32[N, C, S, vocab_size] (hidden states without `project`):
    `Transformer.block_logits` with these parameters."""
    return self.model.apply({"params": self.params}, cache, tokens_NxCxS, start_N, project,
                            method="block_logits")

  def copy_block_logits(self, cache: KVCache, tokens_NxCxS: jax.Array,
                        start_NxC: jax.Array, project: bool = True) -> jax.Array:
    """float32[N, C, S, vocab_size] (hidden states without `project`):
    `Transformer.copy_block_logits` with these parameters."""
    return self.model.apply({"params": self.params}, cache, tokens_NxCxS, start_NxC, project,
                            method="copy_block_logits")

  def block_hidden(self, cache: KVCache, tokens_NxCxS: jax.Array,
                   start_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(float32[N, C, S, vocab_size] logits, hidden states [N, C, S, d_model]):
    `Transformer.block_hidden` with these parameters."""
    return self.model.apply({"params": self.params}, cache, tokens_NxCxS, start_N,
                            method="block_hidden")

  def extend(self, cache: KVCache, tokens_NxCxS: jax.Array,
             start_N: jax.Array, project: bool = True) -> tuple[jax.Array, KVCache]:
    """(float32[N, C, S, vocab_size] logits (hidden states without `project`), the
    cache with the span set to copy 0's): `Transformer.extend` with these parameters."""
    return self.model.apply({"params": self.params}, cache, tokens_NxCxS, start_N, project,
                            method="extend")

  def extend_shared(self, cache: KVCache, shared_NxP: jax.Array, tokens_NxCxT: jax.Array,
                    shared_start_N: jax.Array, start_N: jax.Array,
                    tail_NxR: jax.Array | None = None, tail_start_N: jax.Array | None = None,
                    tail_copy: int = 0, project: bool = True
                    ) -> tuple[jax.Array, jax.Array | None, KVCache]:
    """(float32[N, C, T, vocab_size] logits, the tail's float32[N, R, vocab_size] or
    None, the cache with the shared positions and copy 0's written; hidden states in
    place of logits without `project`): `Transformer.extend_shared` with these
    parameters."""
    return self.model.apply({"params": self.params}, cache, shared_NxP, tokens_NxCxT,
                            shared_start_N, start_N, tail_NxR, tail_start_N, tail_copy,
                            project, method="extend_shared")
