"""The speculative head's training term: any-order autoregressive cross-entropy, teacher forced.

For a masked state `xt` (the same one the backbone's diffusion loss sees), pick a
uniformly random order of (up to `K`) masked positions `s_0, s_1, ...` and feed
the head their true tokens; item `j` is scored on `-log head_j(x0^{s_j} | xt,
x0^{s<j})`. One backbone pass serves both terms
(`fef_jax.models.spec_head.SpecHeadTransformer.with_head`). With `K` at least
the number of masked positions the order covers all of them, so the term is an
unbiased estimate of the any-order AR negative log-likelihood of the masked
tokens given `xt` (divided by their number).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax import losses


def random_items(key: jax.Array, xt_BxL: jax.Array, x0_BxL: jax.Array, mask_id: int,
                 num_items: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A uniformly random order of each row's masked positions, truncated to `num_items`.

  Args:
    key: PRNG key.
    xt_BxL: the masked state; positions equal to `mask_id` are ordered.
    x0_BxL: the clean tokens (the teacher-forced values).
    mask_id: the mask token.
    num_items: static `K <= L`.

  Returns:
    (positions int32[B, K], values int32[B, K] = x0 there, valid bool[B, K]):
    item `k` is valid when the row has more than `k` masked positions; invalid
    items point at unmasked positions and are ignored by the head and the loss.
  """
  masked_BxL = xt_BxL == mask_id
  # Masked positions first, in a uniformly random order; unmasked ones after.
  scores_BxL = jnp.where(masked_BxL, jax.random.uniform(key, xt_BxL.shape), 2.0)
  positions_BxK = jnp.argsort(scores_BxL, axis=1)[:, :num_items].astype(jnp.int32)
  values_BxK = jnp.take_along_axis(x0_BxL, positions_BxK, axis=1)
  valid_BxK = jnp.arange(num_items)[None, :] < jnp.sum(masked_BxL, axis=1)[:, None]
  return positions_BxK, values_BxK, valid_BxK


def any_order_cross_entropy(head_logits_BxKxV: jax.Array, values_BxK: jax.Array,
                            valid_BxK: jax.Array, mask_id: int) -> jax.Array:
  """float32[B]: mean `-log head(value)` over each row's valid items (0 for none).

  The mask's logit is excluded as in `losses.masked_cross_entropy` (values must
  not be `mask_id`).
  """
  # masked_cross_entropy scores the positions marked `mask_id`: mark the valid items.
  ce_BxK = losses.masked_cross_entropy(head_logits_BxKxV, values_BxK,
                                       jnp.where(valid_BxK, mask_id, values_BxK), mask_id)
  return jnp.sum(ce_BxK, axis=1) / jnp.maximum(jnp.sum(valid_BxK, axis=1), 1)
