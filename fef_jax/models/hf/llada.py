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
import jax
import jax.numpy as jnp

from fef_jax.models.hf.loading import CheckpointError, TensorSpec, config_int
from fef_jax.models.transformer import rope

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
  """Bidirectional grouped-query self-attention with RoPE; invalid keys are hidden."""
  config: NetworkConfig

  @nn.compact
  def __call__(self, x_NxLxD: jax.Array, positions_NxL: jax.Array,
               valid_NxL: jax.Array | None) -> jax.Array:
    cfg = self.config
    n, length = x_NxLxD.shape[:2]

    def heads(name: str, count: int) -> jax.Array:
      dense = nn.Dense(count * cfg.head_dim, use_bias=cfg.qkv_bias, dtype=cfg.dtype, name=name)
      return dense(x_NxLxD).reshape(n, length, count, cfg.head_dim)

    # A position per row and token: left-padded rows count from their first valid token.
    q_NxLxHxK = rope(heads("query", cfg.num_heads), positions_NxL, cfg.rope_theta)
    k_NxLxGxK = rope(heads("key", cfg.num_kv_heads), positions_NxL, cfg.rope_theta)
    v_NxLxGxK = heads("value", cfg.num_kv_heads)
    keys_Nx1x1xL = None if valid_NxL is None else valid_NxL[:, None, None, :]
    out_NxLxHxK = jax.nn.dot_product_attention(q_NxLxHxK, k_NxLxGxK, v_NxLxGxK,
                                               mask=keys_Nx1x1xL)
    out = nn.Dense(cfg.d_model, use_bias=False, dtype=cfg.dtype, name="out")
    return out(out_NxLxHxK.reshape(n, length, cfg.num_heads * cfg.head_dim))


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
  """Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`."""
  config: NetworkConfig

  @nn.compact
  def __call__(self, x_NxLxD: jax.Array, positions_NxL: jax.Array,
               valid_NxL: jax.Array | None) -> jax.Array:
    cfg = self.config
    x_NxLxD = x_NxLxD + Attention(cfg, name="attention")(
        _norm(cfg, "attention_norm")(x_NxLxD), positions_NxL, valid_NxL)
    return x_NxLxD + MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x_NxLxD))


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


class Network(nn.Module):
  """int32[N, L] token ids -> float32[N, L, vocab_size] denoiser logits.

  Token ids must lie in `[0, vocab_size)`; an id outside reads NaN embeddings
  (JAX's out-of-bounds gather fill), so that row's logits are NaN.
  """
  config: NetworkConfig

  @nn.compact
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
    cfg = self.config
    embedding_VxD = self.param("embedding", _EMBED_INIT, (cfg.vocab_size, cfg.d_model),
                               jnp.float32)
    # Gather first, then cast: casting the whole table every call would copy it.
    x_NxLxD = jnp.take(embedding_VxD, tokens_NxL, axis=0).astype(cfg.dtype)
    positions_NxL = positions(valid_NxL, tokens_NxL.shape)
    for i in range(cfg.num_layers):
      x_NxLxD = Block(cfg, name=f"block_{i}")(x_NxLxD, positions_NxL, valid_NxL)
    x_NxLxD = _norm(cfg, "final_norm")(x_NxLxD)
    if cfg.tie_embeddings:
      unembed_DxV = embedding_VxD.T
    else:
      unembed_DxV = self.param("unembed", nn.initializers.lecun_normal(),
                               (cfg.d_model, cfg.vocab_size), jnp.float32)
    logits_NxLxV = jnp.einsum("nld,dv->nlv", x_NxLxD, unembed_DxV.astype(cfg.dtype),
                              preferred_element_type=jnp.float32)
    if cfg.shift_logits:
      logits_NxLxV = jnp.concatenate([logits_NxLxV[:, :1], logits_NxLxV[:, :-1]], axis=1)
    return logits_NxLxV


@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
  """`logits_fn(tokens_NxL) -> float32[N, L, V]` for `fef_jax.sample`.

  Hashed by identity, so it can be a static argument of `jax.jit`; the
  parameters are closed over (JAX passes closed-over arrays to the compiled
  program as arguments, not as embedded constants), and each new `Denoiser`
  compiles anew: build one and reuse it.

  Attributes:
    network: the `Network`.
    params: its parameters.
    valid_fn: optional `tokens_NxL -> bool[N, L]` marking non-padding
      positions (e.g. `left_padding_valid_fn(pad_id)`); default: all valid.
  """
  network: Network
  params: Any
  valid_fn: Callable[[jax.Array], jax.Array] | None = None

  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    valid_NxL = None if self.valid_fn is None else self.valid_fn(tokens_NxL)
    return self.network.apply({"params": self.params}, tokens_NxL, valid_NxL)


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
