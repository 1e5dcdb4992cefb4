"""A bidirectional pre-norm transformer denoiser for masked diffusion.

`Transformer(config)(tokens_BxL, valid_BxL, t_B)` maps token ids to float32
logits over the model's `vocab_size` output tokens at every position:
token embedding -> [RMSNorm -> multi-head attention with RoPE -> residual,
RMSNorm -> SwiGLU MLP -> residual] x num_layers -> RMSNorm -> output projection
(tied to the embedding table or untied). Attention is non-causal; `valid_BxL`
hides padding keys. Parameters are always float32; `config.dtype` is the
compute dtype (activations, matmul inputs), and logits accumulate in float32.

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
import jax
import jax.numpy as jnp

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
    remat: rematerialize each block in the backward pass (`nn.remat`).
    dtype: compute dtype, e.g. `jnp.float32` or `jnp.bfloat16`.

  Raises:
    ValueError: (on construction) a size that is not a positive int, `mask_id`
      outside `[0, vocab_size]`, `d_model` not divisible by `num_heads`, an odd
      head dim, `rope_theta <= 0`, or a `dtype` that is not floating; the
      message names the field.
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
  remat: bool = False
  dtype: Any = jnp.float32

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

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def num_embeddings(self) -> int:
    """Rows of the embedding table: `vocab_size`, plus one if the mask is appended."""
    return self.vocab_size + int(self.mask_id == self.vocab_size)


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
    raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")


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
  causal halving since attention is bidirectional), times 3 for training. A
  forward pass (sampling) costs a third of this.

  Raises:
    ValueError: `length` is not a positive int.
  """
  if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length <= 0:
    raise ValueError(f"length must be a positive int, got {length!r}")
  d, f = config.d_model, config.mlp_dim
  matmul_params = config.num_layers * (4 * d * d + 3 * d * f) + d * config.vocab_size
  return 6 * matmul_params + 12 * config.num_layers * length * d


def rope(x_BxLxHxK: jax.Array, positions_L: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding of queries or keys.

  Feature pair `(x[i], x[i + K/2])` at position `m` is rotated by the angle
  `m * theta^(-2i/K)`, so `<rope(q, m), rope(k, n)>` depends on `m - n` only.
  Computed in float32; returned in the input dtype.

  Args:
    x_BxLxHxK: queries or keys; `K` must be even.
    positions_L: the position of each of the `L` tokens.
    theta: base wavelength.

  Returns:
    The rotated array, shape and dtype of `x_BxLxHxK`.
  """
  half = x_BxLxHxK.shape[-1] // 2
  inv_freq_K2 = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_LxK2 = positions_L.astype(jnp.float32)[:, None] * inv_freq_K2
  cos_1xLx1xK2 = jnp.cos(angle_LxK2)[None, :, None, :]
  sin_1xLx1xK2 = jnp.sin(angle_LxK2)[None, :, None, :]
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos_1xLx1xK2 - x2 * sin_1xLx1xK2,
                             x2 * cos_1xLx1xK2 + x1 * sin_1xLx1xK2], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


def timestep_embedding(t_B: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding float32[B, dim] of `1000 t` (`dim` even), periods up to 10^4."""
  half = dim // 2
  freq_H = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  arg_BxH = _TIME_SCALE * t_B.astype(jnp.float32)[:, None] * freq_H
  return jnp.concatenate([jnp.sin(arg_BxH), jnp.cos(arg_BxH)], axis=-1)


def _dense(config: TransformerConfig, features, name: str, axis=-1) -> nn.DenseGeneral:
  return nn.DenseGeneral(features, axis=axis, use_bias=False, dtype=config.dtype,
                         param_dtype=jnp.float32, name=name)


def _norm(config: TransformerConfig, name: str) -> nn.RMSNorm:
  return nn.RMSNorm(epsilon=1e-6, dtype=config.dtype, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
  """Bidirectional multi-head self-attention with RoPE on queries and keys."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, valid_BxL: jax.Array | None) -> jax.Array:
    cfg = self.config
    heads = (cfg.num_heads, cfg.head_dim)
    positions_L = jnp.arange(x_BxLxD.shape[1])
    q_BxLxHxK = rope(_dense(cfg, heads, "query")(x_BxLxD), positions_L, cfg.rope_theta)
    k_BxLxHxK = rope(_dense(cfg, heads, "key")(x_BxLxD), positions_L, cfg.rope_theta)
    v_BxLxHxK = _dense(cfg, heads, "value")(x_BxLxD)
    keys_Bx1x1xL = None if valid_BxL is None else valid_BxL[:, None, None, :]
    out_BxLxHxK = jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK,
                                               mask=keys_Bx1x1xL)
    return _dense(cfg, cfg.d_model, "out", axis=(-2, -1))(out_BxLxHxK)


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
  """Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, valid_BxL: jax.Array | None) -> jax.Array:
    cfg = self.config
    x_BxLxD = x_BxLxD + Attention(cfg, name="attention")(
        _norm(cfg, "attention_norm")(x_BxLxD), valid_BxL)
    return x_BxLxD + MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x_BxLxD))


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


class Transformer(nn.Module):
  """The denoiser network: int32[B, L] token ids -> float32[B, L, vocab_size] logits.

  Token ids must lie in `[0, vocab_size) U {mask_id}`. This cannot be checked
  under jit; an id outside the embedding table reads NaN (JAX's out-of-bounds
  gather fill), so its row's logits are NaN (which `fef_jax.sample` reports).
  """
  config: TransformerConfig

  @nn.compact
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
    embed = nn.Embed(cfg.num_embeddings, cfg.d_model, embedding_init=_EMBED_INIT,
                     dtype=cfg.dtype, param_dtype=jnp.float32, name="embed")
    x_BxLxD = embed(tokens_BxL)
    if cfg.time_conditioning:
      x_BxLxD = x_BxLxD + TimeEmbedding(cfg, name="time")(t_B)[:, None, :]
    block_cls = nn.remat(Block) if cfg.remat else Block
    for i in range(cfg.num_layers):
      x_BxLxD = block_cls(cfg, name=f"block_{i}")(x_BxLxD, valid_BxL)
    x_BxLxD = _norm(cfg, "final_norm")(x_BxLxD)
    if cfg.tie_embeddings:
      unembed_VxD = embed.embedding[:cfg.vocab_size]
    else:
      unembed_VxD = self.param("unembed", nn.initializers.lecun_normal(),
                               (cfg.vocab_size, cfg.d_model), jnp.float32)
    return jnp.einsum("bld,vd->blv", x_BxLxD, unembed_VxD.astype(cfg.dtype),
                      preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: TransformerConfig, key: jax.Array) -> Any:
  """Freshly initialized float32 parameters of `Transformer(config)`, in one jitted call."""
  tokens_1x1 = jnp.full((1, 1), config.mask_id, jnp.int32)
  t_1 = jnp.ones((1,), jnp.float32) if config.time_conditioning else None
  return Transformer(config).init(key, tokens_1x1, None, t_1)["params"]


@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
  """`logits_fn(tokens_NxL) -> float32[N, L, vocab_size]` for `fef_jax.sample`.

  Hashed by identity, so it can be a static argument of `jax.jit`. The
  parameters are closed over: under `fef_jax.sample`'s jit they become
  compile-time constants, and each new `Denoiser` compiles anew. That suits
  evaluation of one set of parameters; it is not meant to be rebuilt every step.

  Attributes:
    model: the `Transformer`.
    params: its parameters (the `"params"` collection).
    valid_fn: optional `tokens_NxL -> bool[N, L]` marking non-padding
      positions (e.g. `lambda x: x != pad_id`); default: all valid.

  With `time_conditioning`, the time given to the model is the masked fraction
  of the valid positions: under the linear schedule, the `t` at which that
  fraction is the expected one.
  """
  model: Transformer
  params: Any
  valid_fn: Callable[[jax.Array], jax.Array] | None = None

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    cfg = self.model.config
    valid_NxL = None if self.valid_fn is None else self.valid_fn(tokens_NxL)
    t_N = None
    if cfg.time_conditioning:
      counted_NxL = (jnp.ones(tokens_NxL.shape, bool) if valid_NxL is None
                     else valid_NxL)
      masked_N = jnp.sum((tokens_NxL == cfg.mask_id) & counted_NxL, axis=1)
      t_N = masked_N / jnp.maximum(jnp.sum(counted_NxL, axis=1), 1)
    return self.model.apply({"params": self.params}, tokens_NxL, valid_NxL, t_N)
