"""LLaDA in Flax, and the bidirectional Llama-style network it shares with Dream.

`Network(config)(tokens_NxL, valid_NxL)` maps token ids to float32 logits:
embedding -> [RMSNorm -> attention (RoPE, grouped-query heads, optional q/k/v
biases, no causal mask) -> residual, RMSNorm -> SwiGLU MLP -> residual]
x num_layers -> RMSNorm -> output projection (tied to the embedding or not),
and, for Dream, logits shifted one position right (`NetworkConfig.shift_logits`).
This is LLaDA's `LLaDALlamaBlock` (upstream `modeling_llada.py`: `attn_norm`,
`q_proj`/`k_proj`/`v_proj`, `attn_out`, `ff_norm`, `silu(ff_proj(x)) *
up_proj(x)`, `ff_out`; final `ln_f` and `ff_out` or the tied `wte`) and
Qwen2's decoder layer (Dream), with attention made bidirectional.

Cached evaluation (the block-local interface of `fef_jax.models.Transformer`):
`Network.encode` returns the logits and a `KVCache` (every layer's RoPE-rotated
keys and values, the valid mask and the token ids); `Network.block_logits`
evaluates `C` copies of a span `[start, start + S)` of each cached state
against it, the context shared by the copies. The network is bidirectional, so
this is the "dual cache" of Fast-dLLM: the span attends to its own keys and to
the cached keys on both sides of it, which were computed from the cached
state's span, not the copy's. It is exact for a copy whose span equals the
cached state's, and for a one-layer network (whose keys depend on each
position's own token only); otherwise an approximation.

Padding: upstream LLaDA ignores `attention_mask` (its attention calls
`scaled_dot_product_attention(..., attn_mask=None, is_causal=False)`), so
padding tokens are attended to there. Here `valid_NxL` hides padding keys, as
Dream's generation does with its 4D mask; on rows without padding both agree.

Parameters (Flax paths, shapes for `D = d_model`, `H` heads, `G` kv heads,
`K = head_dim`, `F = mlp_dim`, `V = vocab_size`):
`embedding [V, D]`; `block_{i}/attention_norm/scale [D]`;
`block_{i}/attention/{query [D, HK], key [D, GK], value [D, GK], out [HK, D]}/kernel`
(plus `query|key|value/bias` with `qkv_bias`); `block_{i}/mlp_norm/scale`;
`block_{i}/mlp/{gate [D, F], up [D, F], down [F, D]}/kernel`;
`final_norm/scale [D]`; `unembed [D, V]` unless tied.

This module also reads LLaDA's own `config.json` keys (`d_model`, `n_heads`,
`n_kv_heads`, `n_layers`, `mlp_hidden_size`, `rope_theta`, `rms_norm_eps`,
`vocab_size`, `embedding_size`, `weight_tying`, ...; upstream
`configuration_llada.py`) and names its tensors
(`model.transformer.wte.weight`, `model.transformer.blocks.{i}.q_proj.weight`, ...).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from fef_jax.models.hf.loading import CheckpointError, TensorSpec, config_int
from fef_jax.models.transformer import attend_span, check_span_inputs, context_mask, rope

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Shape and numerics of a `Network` (static; hashable).

  Attributes:
    vocab_size: `V`, rows of the embedding table and logits per position (the
      mask token is one of them).
    d_model: width of the residual stream.
    num_layers: number of blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads; must divide `num_heads` (grouped-query
      attention when smaller).
    head_dim: features per head; even (RoPE rotates pairs).
    mlp_dim: hidden width of the SwiGLU MLP.
    rope_theta: RoPE base wavelength.
    norm_eps: RMSNorm epsilon.
    qkv_bias: biases on the query, key and value projections (Qwen2/Dream).
    tie_embeddings: the output projection is the embedding table.
    shift_logits: Dream's convention: the raw output at position `i` predicts
      token `i + 1`, so position `i`'s logits are the raw ones at `i - 1` (and
      position 0 repeats position 0's). A left-padded row's first valid
      position thus gets the output of the pad before it: meaningless, and
      unused, since a prompt's first token is never masked (as in Dream).
    dtype: compute dtype (activations, matmul inputs); logits are float32.

  Raises:
    ValueError: (on construction) a size that is not a positive int,
      `num_heads` not divisible by `num_kv_heads`, an odd `head_dim`, a
      non-positive `rope_theta` or `norm_eps`, or a non-floating `dtype`.
  """
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float
  norm_eps: float
  qkv_bias: bool = False
  tie_embeddings: bool = False
  shift_logits: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"NetworkConfig.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"NetworkConfig.num_heads={self.num_heads} must be divisible by "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"NetworkConfig.head_dim={self.head_dim} must be even for RoPE")
    for name in ("rope_theta", "norm_eps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"NetworkConfig.{name} must be a positive number, got {value!r}")
    try:
      floating = jnp.issubdtype(jnp.dtype(self.dtype), jnp.floating)
    except TypeError:
      floating = False
    if not floating:
      raise ValueError(f"NetworkConfig.dtype must be a floating dtype, got {self.dtype!r}")


def _norm(config: NetworkConfig, name: str) -> nn.RMSNorm:
  return nn.RMSNorm(epsilon=config.norm_eps, dtype=config.dtype, name=name)


class Attention(nn.Module):
  """Bidirectional grouped-query self-attention with RoPE; invalid keys are hidden.

  Full pass: `x` is `[N, L, D]`, `mask` None or bool broadcastable to
  `[N, heads, L, L]`. Span pass (`context` given): `x` is `[N, C, S, D]`, `C`
  copies of `S` positions, `mask` bool[N, S, S] says which span keys each span
  query sees, and `context = (keys [N, L, G, K], values [N, L, G, K],
  mask bool[N, L])` adds cached keys shared by the copies (`attend_span`). Both
  return the output and the (rotated keys, values) of their own tokens.
  """
  config: NetworkConfig

  @nn.compact
  def __call__(self, x: jax.Array, positions_NxL: jax.Array, mask: jax.Array | None,
               context: tuple[jax.Array, jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    cfg = self.config
    lead = x.shape[:-1]

    def heads(name: str, count: int) -> jax.Array:
      dense = nn.Dense(count * cfg.head_dim, use_bias=cfg.qkv_bias, dtype=cfg.dtype, name=name)
      return dense(x).reshape(*lead, count, cfg.head_dim)

    # A position per row and token: left-padded rows count from their first valid token.
    q = rope(heads("query", cfg.num_heads), positions_NxL, cfg.rope_theta)
    k = rope(heads("key", cfg.num_kv_heads), positions_NxL, cfg.rope_theta)
    v = heads("value", cfg.num_kv_heads)
    if context is None:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    else:
      out = attend_span(q, k, v, mask, *context)
    dense = nn.Dense(cfg.d_model, use_bias=False, dtype=cfg.dtype, name="out")
    return dense(out.reshape(*lead, cfg.num_heads * cfg.head_dim)), (k, v)


class MLP(nn.Module):
  """SwiGLU: `down(silu(gate(x)) * up(x))`."""
  config: NetworkConfig

  @nn.compact
  def __call__(self, x_NxLxD: jax.Array) -> jax.Array:
    cfg = self.config
    dense = lambda features, name: nn.Dense(features, use_bias=False, dtype=cfg.dtype, name=name)
    hidden_NxLxF = nn.silu(dense(cfg.mlp_dim, "gate")(x_NxLxD)) * dense(cfg.mlp_dim, "up")(x_NxLxD)
    return dense(cfg.d_model, "down")(hidden_NxLxF)


class Block(nn.Module):
  """Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

  Returns the new stream and the attention's (keys, values); see `Attention`.
  """
  config: NetworkConfig

  @nn.compact
  def __call__(self, x: jax.Array, positions_NxL: jax.Array, mask: jax.Array | None,
               context: tuple[jax.Array, jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    cfg = self.config
    attended, keys_values = Attention(cfg, name="attention")(
        _norm(cfg, "attention_norm")(x), positions_NxL, mask, context)
    x = x + attended
    return x + MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x)), keys_values


def positions(valid_NxL: jax.Array | None, shape: tuple[int, int]) -> jax.Array:
  """RoPE positions int32[N, L]: `0..L-1`, or counted from each row's first valid token.

  Dream's generation passes `position_ids = cumsum(attention_mask) - 1` (and 1
  at padding); padding positions here get 0. RoPE scores depend only on
  position differences, so either choice leaves valid positions' logits the
  same up to rounding; counting from the first valid token matches Dream's.
  """
  if valid_NxL is None:
    return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
  return jnp.maximum(jnp.cumsum(valid_NxL.astype(jnp.int32), axis=1) - 1, 0)


@flax.struct.dataclass
class KVCache:
  """Every layer's keys and values for a batch of states: the context of `block_logits`.

  Every leaf has the batch `N` as its leading axis, so rows can be selected
  with `jnp.where` like the states they were computed from.

  Attributes:
    keys_NxYxLxGxK: RoPE-rotated keys of the `Y = num_layers` layers (`G` kv
      heads of `K` features), in the compute dtype.
    values_NxYxLxGxK: values, same shape and dtype.
    valid_NxL: bool, the non-padding positions of the cached states (all True
      when encoded without a mask).
    tokens_NxL: int32, the cached states' token ids (Dream's shifted logits
      read the token just before a span from here).
  """
  keys_NxYxLxGxK: jax.Array
  values_NxYxLxGxK: jax.Array
  valid_NxL: jax.Array
  tokens_NxL: jax.Array


def _check_tokens(tokens_NxL: Any, valid_NxL: Any) -> None:
  """Shape and dtype checks of `encode` (static, so they run under jit too)."""
  shape = getattr(tokens_NxL, "shape", None)
  if shape is None or len(shape) != 2 or not jnp.issubdtype(tokens_NxL.dtype, jnp.integer):
    raise ValueError(f"tokens_NxL must be an integer array of shape [N, L], got "
                     f"{getattr(tokens_NxL, 'dtype', type(tokens_NxL))}{shape}")
  if valid_NxL is not None and (jnp.shape(valid_NxL) != shape
                                or jnp.result_type(valid_NxL) != jnp.bool_):
    raise ValueError(f"valid_NxL must be bool{list(shape)}, got "
                     f"{jnp.result_type(valid_NxL)}{list(jnp.shape(valid_NxL))}")


def _slice_rows(x_NxL: jax.Array, start_N: jax.Array, width: int) -> jax.Array:
  """`x[n, start_n : start_n + width]` per row (a later start is clamped)."""
  return jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (width,)))(x_NxL, start_N)


class Network(nn.Module):
  """int32[N, L] token ids -> float32[N, L, vocab_size] denoiser logits.

  Token ids must lie in `[0, vocab_size)`; an id outside reads NaN embeddings
  (JAX's out-of-bounds gather fill), so that row's logits are NaN.
  `encode` and `block_logits` (call them with `apply(..., method=...)`) are the
  cached evaluation described in the module docstring.
  """
  config: NetworkConfig

  def __call__(self, tokens_NxL: jax.Array, valid_NxL: jax.Array | None = None) -> jax.Array:
    """Logits of every position.

    Args:
      tokens_NxL: int[N, L] token ids.
      valid_NxL: optional bool[N, L]; keys at invalid (padding) positions are
        never attended to, and RoPE positions count from each row's first
        valid token (see `positions`). Logits at invalid positions are finite
        and meaningless.

    Returns:
      float32[N, L, vocab_size] logits, shifted as Dream defines them when
      `config.shift_logits`.
    """
    logits_NxLxV, _ = self._full(tokens_NxL, valid_NxL)
    return logits_NxLxV

  def encode(self, tokens_NxL: jax.Array,
             valid_NxL: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """The full pass, also returning every layer's keys and values.

    Args:
      tokens_NxL, valid_NxL: as for `__call__`.

    Returns:
      (float32[N, L, vocab_size] logits, the same as `__call__`'s; the `KVCache`
      of the `N` states, `valid_NxL` all True when `valid_NxL` is None).

    Raises:
      ValueError: tokens not an integer [N, L] array, or `valid_NxL` not bool[N, L].
    """
    _check_tokens(tokens_NxL, valid_NxL)
    logits_NxLxV, keys_values = self._full(tokens_NxL, valid_NxL)
    valid_NxL = jnp.ones(tokens_NxL.shape, bool) if valid_NxL is None else valid_NxL
    return logits_NxLxV, KVCache(
        keys_NxYxLxGxK=jnp.stack([k for k, _ in keys_values], axis=1),
        values_NxYxLxGxK=jnp.stack([v for _, v in keys_values], axis=1),
        valid_NxL=valid_NxL, tokens_NxL=tokens_NxL.astype(jnp.int32))

  def block_logits(self, cache: KVCache, tokens_NxCxS: jax.Array,
                   start_N: jax.Array) -> jax.Array:
    """Logits of the span `[start, start + S)` of `C` copies of each cached state.

    Copy `c` of row `n` is the cached state `n` with positions
    `start_n .. start_n + S - 1` replaced by `tokens_NxCxS[n, c]`. The span's
    queries attend to the copy's own valid span keys and to the cache's valid
    keys on both sides of the span (`context_mask("bidirectional", ...)`); the
    cached keys are not recomputed, so this is an approximation of `__call__`
    on each copy ("dual cache"), exact for a copy whose span equals the cached
    state's, and for a one-layer network. Validity and RoPE positions of the
    span are read from the cache (`positions` of the cached valid mask, so
    left-padded rows count from their first valid token, as in the full pass).

    Shifted logits (Dream): position `i`'s logits are the raw output at
    `max(i - 1, 0)`, so the network evaluates an extended span of `S + 1`
    positions from `e = max(start - 1, 0)`: `[start - 1, start + S)`, or
    `[0, S + 1)` at `start = 0`. The extra position lies outside the copies'
    span, so its token is the cached one (the same in every copy); the context
    mask excludes the whole extended span, and the raw outputs at
    `max(i - 1, 0)` are picked before the output projection.

    Args:
      cache: a `KVCache` of `N` states of length `L` (from `encode`).
      tokens_NxCxS: int[N, C, S] span tokens, static `S <= L` (`S + 1 <= L`
        with `shift_logits`).
      start_N: int[N] span starts, traced; `start + S <= L` is required and not
        checked (a later start is clamped by `lax.dynamic_slice`, giving the
        logits of another span).

    Returns:
      float32[N, C, S, vocab_size] logits.

    Raises:
      ValueError: tokens not an integer [N, C, S] array, a batch that is not
        the cache's, `S > L` (`S + 1 > L` with `shift_logits`), or `start_N`
        not int[N].
    """
    cfg = self.config
    check_span_inputs(cache.valid_NxL, tokens_NxCxS, start_N, int(cfg.shift_logits),
                      " (shifted logits read the raw output one position before the span)")
    n, copies, span = tokens_NxCxS.shape
    start_N = jnp.asarray(start_N).astype(jnp.int32)
    shift = int(cfg.shift_logits)
    width = span + shift  # `W`, the evaluated positions `[first, first + W)`
    first_N = jnp.maximum(start_N - shift, 0)
    valid_NxW = _slice_rows(cache.valid_NxL, first_N, width)
    positions_NxW = _slice_rows(positions(cache.valid_NxL, cache.valid_NxL.shape),
                                first_N, width)
    tokens_NxCxW = tokens_NxCxS
    pick_NxS = None
    if shift:
      # The copies' span sits at offset 1 of the extended one (0 when start = 0).
      offset_Nx1 = (start_N - first_N)[:, None]
      relative_W = jnp.arange(width, dtype=jnp.int32)
      inside_NxW = (relative_W >= offset_Nx1) & (relative_W < offset_Nx1 + span)
      index_NxCxW = jnp.broadcast_to(jnp.clip(relative_W - offset_Nx1, 0, span - 1)[:, None],
                                     (n, copies, width))
      tokens_NxCxW = jnp.where(inside_NxW[:, None, :],
                               jnp.take_along_axis(tokens_NxCxS, index_NxCxW, axis=2),
                               _slice_rows(cache.tokens_NxL, first_N, width)[:, None, :])
      pick_NxS = (jnp.maximum(start_N[:, None] + jnp.arange(span, dtype=jnp.int32) - 1, 0)
                  - first_N[:, None])
    span_mask_NxWxW = jnp.broadcast_to(valid_NxW[:, None, :], (n, width, width))
    context = (cache.keys_NxYxLxGxK, cache.values_NxYxLxGxK,
               context_mask("bidirectional", cache.valid_NxL, first_N, width))
    logits_NxCxSxV, _ = self._forward(tokens_NxCxW, positions_NxW[:, None, :],
                                      span_mask_NxWxW, context, pick_NxS)
    return logits_NxCxSxV

  def _full(self, tokens_NxL: jax.Array, valid_NxL: jax.Array | None
            ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """The full pass: (shifted when configured) logits, every layer's (keys, values)."""
    mask = None if valid_NxL is None else valid_NxL[:, None, None, :]
    logits_NxLxV, keys_values = self._forward(
        tokens_NxL, positions(valid_NxL, tokens_NxL.shape), mask)
    if self.config.shift_logits:
      logits_NxLxV = jnp.concatenate([logits_NxLxV[:, :1], logits_NxLxV[:, :-1]], axis=1)
    return logits_NxLxV, keys_values

  @nn.compact
  def _forward(self, tokens: jax.Array, positions_: jax.Array, mask: jax.Array | None,
               context: tuple[jax.Array, jax.Array, jax.Array] | None = None,
               pick_NxS: jax.Array | None = None
               ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """The network on `[N, L]` tokens, or on `[N, C, W]` span copies with a `context`
    of stacked layer keys and values `[N, Y, L, G, K]` and a key mask `[N, L]`.

    `pick_NxS` (span pass only) selects, per row, the span positions (indices
    into `W`) whose final hidden states are projected to logits.

    Returns:
      (float32 raw (unshifted) logits `[..., vocab_size]`, every layer's
      (keys, values) of `tokens`).
    """
    cfg = self.config
    embedding_VxD = self.param("embedding", _EMBED_INIT, (cfg.vocab_size, cfg.d_model),
                               jnp.float32)
    # Gather first, then cast: casting the whole table every call would copy it.
    x = jnp.take(embedding_VxD, tokens, axis=0).astype(cfg.dtype)
    keys_values = []
    for i in range(cfg.num_layers):
      layer_context = None if context is None else (
          context[0][:, i], context[1][:, i], context[2])
      x, layer_keys_values = Block(cfg, name=f"block_{i}")(x, positions_, mask, layer_context)
      keys_values.append(layer_keys_values)
    if pick_NxS is not None:
      index = jnp.broadcast_to(pick_NxS[:, None, :, None],
                               (*x.shape[:2], pick_NxS.shape[1], 1))
      x = jnp.take_along_axis(x, index, axis=2)
    x = _norm(cfg, "final_norm")(x)
    if cfg.tie_embeddings:
      unembed_DxV = embedding_VxD.T
    else:
      unembed_DxV = self.param("unembed", nn.initializers.lecun_normal(),
                               (cfg.d_model, cfg.vocab_size), jnp.float32)
    logits = jnp.einsum("...d,dv->...v", x, unembed_DxV.astype(cfg.dtype),
                        preferred_element_type=jnp.float32)
    return logits, keys_values


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
  """`logits_fn(tokens_NxL) -> float32[N, L, V]` for `fef_jax.sample`.

  Hashed by identity, so it can be a static argument of `jax.jit`. A pytree
  whose leaves are the parameters (`network` and `valid_fn` are static):
  `fef_jax.sample` passes them to its compiled program as arguments, keeping
  their placement (`load(..., mesh=...)` shards them), and never embeds them as
  constants, so denoisers of one network and `valid_fn` share a compiled sampler.

  It also offers the block-local interface of
  `fef_jax.samplers.cache.BlockLocalDenoiser` (`encode`, `block_logits`,
  `exact_cache`, `block_length`); its block-local logits are approximate (the
  network is bidirectional: see `Network.block_logits`).

  Attributes:
    network: the `Network`.
    params: its parameters.
    valid_fn: optional `tokens_NxL -> bool[N, L]` marking non-padding
      positions (e.g. `left_padding_valid_fn(pad_id)`); default: all valid.
  """
  network: Network = dataclasses.field(metadata={"static": True})
  params: Any
  valid_fn: Callable[[jax.Array], jax.Array] | None = dataclasses.field(
      default=None, metadata={"static": True})

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    valid_NxL = None if self.valid_fn is None else self.valid_fn(tokens_NxL)
    return self.network.apply({"params": self.params}, tokens_NxL, valid_NxL)

  @property
  def exact_cache(self) -> bool:
    """False: a bidirectional network's block-local logits are approximate (exact
    only for a copy whose span equals the cached state's, or a one-layer network)."""
    return False

  @property
  def block_length(self) -> int | None:
    """None: the network has no attention blocks (any span length works)."""
    return None

  def encode(self, tokens_NxL: jax.Array) -> tuple[jax.Array, KVCache]:
    """(float32[N, L, V] logits, as `__call__`; the `KVCache` of the `N` states).

    The valid mask is `valid_fn(tokens_NxL)` (all True without one) and is
    stored in the cache.

    Raises:
      ValueError: tokens not an integer [N, L] array, or `valid_fn` not
        returning bool[N, L].
    """
    valid_NxL = None if self.valid_fn is None else self.valid_fn(tokens_NxL)
    return self.network.apply({"params": self.params}, tokens_NxL, valid_NxL,
                              method="encode")

  def block_logits(self, cache: KVCache, tokens_NxCxS: jax.Array,
                   start_N: jax.Array) -> jax.Array:
    """float32[N, C, S, V]: logits of positions `[start, start + S)` of `C` copies of
    each cached state, the copies holding `tokens_NxCxS` there.

    `Network.block_logits` with these parameters: an approximation of
    `__call__` on each copy (the cached keys outside the span are not
    recomputed), exact for a copy whose span equals the cached state's and for
    a one-layer network. Padding is read from the cache (`valid_fn` is applied
    by `encode`, not here); `start + S <= L` is required and not checked.

    Raises:
      ValueError: tokens not an integer [N, C, S] array, a batch that is not
        the cache's, `S > L` (`S + 1 > L` for shifted logits, i.e. Dream), or
        `start_N` not int[N].
    """
    return self.network.apply({"params": self.params}, cache, tokens_NxCxS, start_N,
                              method="block_logits")


BlockNames = dict[str, str]  # role (see `block_roles`) -> tensor name with `{i}`


def block_roles(config: NetworkConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]:
  """Per-block parameters by role: (path inside `block_{i}`, checkpoint shape, is a Linear weight).

  Linear weights are stored `[out, in]` as in `torch.nn.Linear`.
  """
  d, f = config.d_model, config.mlp_dim
  q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  roles = {
      "attention_norm": (("attention_norm", "scale"), (d,), False),
      "query": (("attention", "query", "kernel"), (q, d), True),
      "key": (("attention", "key", "kernel"), (kv, d), True),
      "value": (("attention", "value", "kernel"), (kv, d), True),
      "out": (("attention", "out", "kernel"), (d, q), True),
      "mlp_norm": (("mlp_norm", "scale"), (d,), False),
      "gate": (("mlp", "gate", "kernel"), (f, d), True),
      "up": (("mlp", "up", "kernel"), (f, d), True),
      "down": (("mlp", "down", "kernel"), (d, f), True),
  }
  if config.qkv_bias:
    roles.update({"query_bias": (("attention", "query", "bias"), (q,), False),
                  "key_bias": (("attention", "key", "bias"), (kv,), False),
                  "value_bias": (("attention", "value", "bias"), (kv,), False)})
  return roles


def build_specs(config: NetworkConfig, *, embedding: str, blocks: BlockNames,
                final_norm: str, unembed: str) -> list[TensorSpec]:
  """Every tensor of a checkpoint whose names are given per role (see `block_roles`)."""
  d, v = config.d_model, config.vocab_size
  specs = [TensorSpec(embedding, ("embedding",), (v, d))]
  roles = block_roles(config)
  for i in range(config.num_layers):
    for role, (path, shape, linear) in roles.items():
      specs.append(TensorSpec(blocks[role].format(i=i), (f"block_{i}",) + path, shape, linear))
  specs.append(TensorSpec(final_norm, ("final_norm", "scale"), (d,)))
  if not config.tie_embeddings:
    specs.append(TensorSpec(unembed, ("unembed",), (v, d), transpose=True))
  return specs


# Upstream names: `LLaDAModelLM.model` (LLaDAModel) `.transformer` holds `wte`,
# `blocks` (LLaDALlamaBlock), `ln_f` and, untied, `ff_out`.
_BLOCK = "model.transformer.blocks.{i}."
_BLOCK_NAMES: BlockNames = {
    "attention_norm": _BLOCK + "attn_norm.weight", "query": _BLOCK + "q_proj.weight",
    "key": _BLOCK + "k_proj.weight", "value": _BLOCK + "v_proj.weight",
    "out": _BLOCK + "attn_out.weight", "mlp_norm": _BLOCK + "ff_norm.weight",
    "gate": _BLOCK + "ff_proj.weight", "up": _BLOCK + "up_proj.weight",
    "down": _BLOCK + "ff_out.weight",
}

# Options of upstream LLaDA that this port does not implement, with the only
# supported value; LLaDA-8B's config.json has exactly these.
_REQUIRED = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
             "rope": True, "alibi": False, "include_bias": False, "include_qkv_bias": False,
             "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False,
             "block_group_size": 1, "layer_norm_with_affine": True}


def network_config(config: dict[str, Any]) -> NetworkConfig:
  """The `NetworkConfig` of a LLaDA `config.json` (upstream `configuration_llada.py` keys).

  The compute dtype is float32; `load` replaces it with the one asked for.

  Defaults follow upstream: `n_kv_heads` = `n_heads` (1 with
  `multi_query_attention`), `mlp_hidden_size` = `mlp_ratio * d_model`,
  `rope_theta` 10000, `rms_norm_eps` 1e-5, `weight_tying` true; the
  vocabulary is `embedding_size` rows (LLaDA-8B: 126464), or `vocab_size`.

  Raises:
    CheckpointError: a required key (`d_model`, `n_heads`, `n_layers`,
      `vocab_size`) missing or not an int, `d_model` not a multiple of
      `n_heads`, an option this port does not implement (e.g. `block_type`
      other than "llama"), or sizes that `NetworkConfig` rejects.
  """
  for key, supported in _REQUIRED.items():
    if key in config and config[key] != supported:
      raise CheckpointError(f"config.json: LLaDA option {key}={config[key]!r} is not "
                            f"supported (only {supported!r})")
  d_model, n_heads = config_int(config, "d_model"), config_int(config, "n_heads")
  if n_heads <= 0 or d_model % n_heads:
    raise CheckpointError(f"config.json: d_model={d_model} must be a multiple of "
                          f"n_heads={n_heads}")
  n_kv_heads = config_int(config, "n_kv_heads",
                          1 if config.get("multi_query_attention") else n_heads)
  mlp_dim = config_int(config, "mlp_hidden_size", config_int(config, "mlp_ratio", 4) * d_model)
  try:
    return NetworkConfig(
        vocab_size=config_int(config, "embedding_size", config_int(config, "vocab_size")),
        d_model=d_model, num_layers=config_int(config, "n_layers"), num_heads=n_heads,
        num_kv_heads=n_kv_heads, head_dim=d_model // n_heads, mlp_dim=mlp_dim,
        rope_theta=config.get("rope_theta", 10000.0),
        norm_eps=config.get("rms_norm_eps", 1e-5), qkv_bias=False,
        tie_embeddings=bool(config.get("weight_tying", True)), shift_logits=False)
  except ValueError as e:
    raise CheckpointError(f"config.json: {e}") from e


def tensor_specs(config: NetworkConfig) -> list[TensorSpec]:
  """LLaDA's tensor names, e.g. `model.transformer.blocks.0.q_proj.weight`."""
  return build_specs(config, embedding="model.transformer.wte.weight", blocks=_BLOCK_NAMES,
                     final_norm="model.transformer.ln_f.weight",
                     unembed="model.transformer.ff_out.weight")
