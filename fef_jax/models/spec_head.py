"""A single-pass speculative head: any-order causal layers over an ordered set of positions.

A masked-diffusion backbone (`Transformer`, bidirectional over `xt`) gives the
marginals `q(x^i | xt)` of every position in one pass. The head adds
`head_layers` transformer blocks that run *causally over a sequence of K items*
for an ordered list of positions `s_0..s_{K-1}` (self-speculative masked
diffusion, arXiv 2510.03929; any-order two-stream attention, arXiv 2504.20456):

    item j input = h[s_j] + (j == 0 ? start : Dense([embed(x^{s_{j-1}}), h[s_{j-1}]]))

where `h` is the backbone's final hidden state. The token revealed at the
previous item enters together with that item's hidden state, which ties it to
its position; RoPE positions are the actual positions `s_j`; item `j` attends
to items `<= j` only. So item `j`'s logits model `p(x^{s_j} | xt, x^{s_0..s_{j-1}})`
and depend on the values of items `< j` only: one pass of the head, fed the
values of a whole ordered set, gives every prefix-conditioned factor of the
head's joint `prod_j head_j(x^{s_j} | xt, x^{s<j})` (teacher forcing). The head
shares the backbone's token embedding and output projection; it has its own
blocks, final norm, start vector and `reveal` projection.

    config = SpecHeadConfig(vocab_size=V, mask_id=V, max_length=L, d_model=64,
                            num_layers=3, num_heads=4, mlp_dim=192, head_layers=1)
    params = init_params(config, key)           # {"backbone": ..., "head": ...}
    denoiser = SpecHeadDenoiser(SpecHeadTransformer(config), params)
    fj.sample(denoiser, tokens, key, "fef", mask_id=V, verifier="head")

`SpecHeadDenoiser(tokens)` returns the backbone's logits, so every sampler runs
on it; FeF with `verifier="head"` samples the head's joint
(`fef_jax.samplers.head`).
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fef_jax.models import host_init
from fef_jax.models.transformer import _EMBED_INIT
from fef_jax.models.transformer import Block
from fef_jax.models.transformer import Denoiser
from fef_jax.models.transformer import Transformer
from fef_jax.models.transformer import TransformerConfig
from fef_jax.models.transformer import _dense
from fef_jax.models.transformer import _norm
from fef_jax.models.transformer import config_repr
from fef_jax.models.transformer import project_logits
from fef_jax.models.transformer import rope_rotation


@dataclasses.dataclass(frozen=True)
class SpecHeadConfig(TransformerConfig):
  """A backbone `TransformerConfig` plus the head's depth (static; hashable).

  Every backbone field keeps its meaning; the head's blocks use the backbone's
  width, heads, MLP width, RoPE base and dtype. The repr (a checkpoint's
  fingerprint) names `head_layers`, so a head checkpoint never resumes as a
  plain transformer or the other way round.

  Attributes:
    head_layers: number of causal head blocks (>= 1).

  Raises:
    ValueError: (on construction) a bad backbone field (see `TransformerConfig`)
      or `head_layers` not a positive int.
  """
  head_layers: int = 1

  def __repr__(self) -> str:
    # Every field, as the generated dataclass repr printed them before
    # `attention_impl` existed (which prints only away from its default).
    return config_repr(self)

  def __post_init__(self):
    super().__post_init__()
    if (isinstance(self.head_layers, bool) or not isinstance(self.head_layers, numbers.Integral)
        or self.head_layers <= 0):
      raise ValueError(f"SpecHeadConfig.head_layers must be a positive int, got "
                       f"{self.head_layers!r}")


def _take_items(values_BxLxD: jax.Array, positions_BxK: jax.Array) -> jax.Array:
  """`[B, K, D]`: `values[b, positions[b, k]]`."""
  return jnp.take_along_axis(values_BxLxD, positions_BxK[..., None], axis=1)


def _shift_right(values_BxKxD: jax.Array) -> jax.Array:
  """`values` moved one item later (item 0 gets zeros): item j sees item j-1's entry."""
  return jnp.pad(values_BxKxD, ((0, 0), (1, 0), (0, 0)))[:, :-1]


def item_mask(valid_BxK: jax.Array) -> jax.Array:
  """bool[B, 1, K, K]: item j attends to valid items i <= j, and always to itself
  (so an invalid item's softmax is never empty; its output is ignored)."""
  num_items = valid_BxK.shape[1]
  index_K = jnp.arange(num_items)
  causal_KxK = index_K[None, :] <= index_K[:, None]
  keys_BxKxK = valid_BxK[:, None, :] | jnp.eye(num_items, dtype=bool)[None]
  return (causal_KxK[None] & keys_BxKxK)[:, None]


class SpecHead(nn.Module):
  """The causal head over K items (see the module docstring)."""
  config: SpecHeadConfig

  @nn.compact
  def __call__(self, hidden_BxLxD: jax.Array, embed_ExD: jax.Array, unembed_VxD: jax.Array,
               positions_BxK: jax.Array, values_BxK: jax.Array, valid_BxK: jax.Array,
               queries_BxW: jax.Array | None = None) -> jax.Array:
    """Logits of the queried items.

    Args:
      hidden_BxLxD: the backbone's final hidden states of the states `xt`.
      embed_ExD: the backbone's token embedding table.
      unembed_VxD: the backbone's output projection.
      positions_BxK: int[B, K] the ordered positions `s_0..s_{K-1}` (static K).
      values_BxK: int[B, K] the token at each item's position (ids < E); item
        j reads the values of items < j only.
      valid_BxK: bool[B, K] items that exist; other items are never attended
        to (their own outputs are meaningless).
      queries_BxW: optional int[B, W] item indices whose logits to return
        (None: all K), so that only those are normed and projected.

    Returns:
      float32[B, W or K, vocab_size]: logits of `x^{s_j}` given `xt` and the
      values of items `< j`, for each queried item j.
    """
    cfg = self.config
    item_BxKxD = _take_items(hidden_BxLxD, positions_BxK)
    token_BxKxD = jnp.take(embed_ExD, values_BxK, axis=0).astype(cfg.dtype)
    revealed_BxKxD = _dense(cfg, cfg.d_model, "reveal")(
        _shift_right(jnp.concatenate([token_BxKxD, item_BxKxD], axis=-1)))
    start_D = self.param("start", _EMBED_INIT, (cfg.d_model,), jnp.float32)
    first_1xKx1 = (jnp.arange(positions_BxK.shape[1]) == 0)[None, :, None]
    x = item_BxKxD + jnp.where(first_1xKx1, start_D.astype(cfg.dtype), revealed_BxKxD)
    mask = item_mask(valid_BxK)
    rotation = rope_rotation(positions_BxK, cfg.head_dim, cfg.rope_theta)
    for i in range(cfg.head_layers):
      x, _ = Block(cfg, name=f"block_{i}")(x, rotation, mask)
    if queries_BxW is not None:
      x = _take_items(x, queries_BxW)
    return project_logits(_norm(cfg, "final_norm")(x), unembed_VxD)


class SpecHeadTransformer(nn.Module):
  """Backbone `Transformer` plus `SpecHead`; parameters `{"backbone": ..., "head": ...}`.

  `__call__`, `encode`, `block_logits`, `copy_block_logits`, `block_hidden`, `extend`,
  `extend_shared`, `hidden`, `features` and `project_hidden` are the backbone's (so
  `Denoiser` and every sampler work unchanged); `head_logits` runs the head on backbone hidden
  states; `with_head` is the training forward: one backbone pass and the head over
  teacher-forced items.
  """
  config: SpecHeadConfig

  def setup(self):
    self.backbone = Transformer(self.config)
    self.head = SpecHead(self.config)

  def __call__(self, tokens_BxL, valid_BxL=None, t_B=None):
    return self.backbone(tokens_BxL, valid_BxL, t_B)

  def encode(self, tokens_BxL, valid_BxL=None, project=True):
    return self.backbone.encode(tokens_BxL, valid_BxL, project)

  def block_logits(self, cache, tokens_BxCxS, start_B, project=True):
    return self.backbone.block_logits(cache, tokens_BxCxS, start_B, project)

  def copy_block_logits(self, cache, tokens_BxCxS, start_BxC, project=True):
    return self.backbone.copy_block_logits(cache, tokens_BxCxS, start_BxC, project)

  def block_hidden(self, cache, tokens_BxCxS, start_B):
    return self.backbone.block_hidden(cache, tokens_BxCxS, start_B)

  def extend(self, cache, tokens_BxCxS, start_B, project=True):
    return self.backbone.extend(cache, tokens_BxCxS, start_B, project)

  def extend_shared(self, cache, shared_BxP, tokens_BxCxT, shared_start_B, start_B,
                    tail_BxR=None, tail_start_B=None, tail_copy=0, project=True):
    return self.backbone.extend_shared(cache, shared_BxP, tokens_BxCxT, shared_start_B,
                                       start_B, tail_BxR, tail_start_B, tail_copy, project)

  def project_hidden(self, hidden_xD):
    return self.backbone.project_hidden(hidden_xD)

  def hidden(self, tokens_BxL, valid_BxL=None, t_B=None):
    return self.backbone.hidden(tokens_BxL, valid_BxL, t_B)

  def features(self, tokens_BxL, valid_BxL=None, t_B=None):
    return self.backbone.features(tokens_BxL, valid_BxL, t_B)

  def head_logits(self, hidden_BxLxD: jax.Array, positions_BxK: jax.Array,
                  values_BxK: jax.Array, valid_BxK: jax.Array,
                  queries_BxW: jax.Array | None = None) -> jax.Array:
    """`SpecHead` with the backbone's embedding and output projection; float32[B, W|K, V]."""
    embed_ExD, unembed_VxD = self.backbone.output_tables()
    return self.head(hidden_BxLxD, embed_ExD, unembed_VxD, positions_BxK, values_BxK,
                     valid_BxK, queries_BxW)

  def with_head(self, tokens_BxL: jax.Array, valid_BxL: jax.Array | None, t_B: jax.Array | None,
                positions_BxK: jax.Array, values_BxK: jax.Array,
                items_valid_BxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(backbone logits float32[B, L, V], head logits float32[B, K, V]) from one backbone pass."""
    logits_BxLxV, hidden_BxLxD = self.hidden(tokens_BxL, valid_BxL, t_B)
    return logits_BxLxV, self.head_logits(hidden_BxLxD, positions_BxK, values_BxK,
                                          items_valid_BxK)

  def features_with_head(self, tokens_BxL: jax.Array, valid_BxL: jax.Array | None,
                         t_B: jax.Array | None, positions_BxK: jax.Array,
                         values_BxK: jax.Array, items_valid_BxK: jax.Array
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`with_head` without the backbone's output projection: (hidden states [B, L, D],
    the output projection float32[V, D], head logits float32[B, K, V]); see
    `Transformer.features`."""
    hidden_BxLxD, unembed_VxD = self.features(tokens_BxL, valid_BxL, t_B)
    return hidden_BxLxD, unembed_VxD, self.head_logits(hidden_BxLxD, positions_BxK,
                                                       values_BxK, items_valid_BxK)


def init_params(config: SpecHeadConfig, key: jax.Array) -> Any:
  """Freshly initialized float32 parameters of `SpecHeadTransformer(config)`, on the
  default device (computed on the host's CPU, as `transformer.init_params`)."""
  return host_init.computed_on_host(functools.partial(_init_params, config), key)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(config: SpecHeadConfig, key: jax.Array) -> Any:
  tokens_1x1 = jnp.full((1, 1), config.mask_id, jnp.int32)
  t_1 = jnp.ones((1,), jnp.float32) if config.time_conditioning else None
  items_1x1 = jnp.zeros((1, 1), jnp.int32)
  return SpecHeadTransformer(config).init(
      key, tokens_1x1, None, t_1, items_1x1, items_1x1, jnp.ones((1, 1), bool),
      method="with_head")["params"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class SpecHeadDenoiser(Denoiser):
  """A `Denoiser` of a `SpecHeadTransformer` that also offers the head.

  Calling it gives the backbone's logits (the marginals, FeF's drafts), so
  every sampler works with it. `fef_jax.sample(..., method="fef",
  verifier="head")` uses `hidden` once per step and `head_logits` once per
  verification round (`fef_jax.samplers.head`). Hashed by identity; a pytree
  of its parameters, as `Denoiser`.
  """

  @property
  def head_layers(self) -> int:
    return self.model.config.head_layers

  @property
  def num_layers(self) -> int:
    """The backbone's layers (the head's cost is counted in backbone layer-positions)."""
    return self.model.config.num_layers

  def head_logits(self, hidden_NxLxD: jax.Array, positions_NxK: jax.Array,
                  values_NxK: jax.Array, valid_NxK: jax.Array,
                  queries_NxW: jax.Array | None = None) -> jax.Array:
    """float32[N, W or K, vocab_size]: `SpecHeadTransformer.head_logits` with these parameters."""
    return self.model.apply({"params": self.params}, hidden_NxLxD, positions_NxK, values_NxK,
                            valid_NxK, queries_NxW, method="head_logits")


def make_denoiser(model: nn.Module, params: Any, valid_fn=None) -> Denoiser:
  """The denoiser of a trained model: a `SpecHeadDenoiser` for a `SpecHeadTransformer`
  (so `verifier="head"` can use it), a `Denoiser` otherwise."""
  cls = SpecHeadDenoiser if isinstance(model, SpecHeadTransformer) else Denoiser
  return cls(model, params, valid_fn)
