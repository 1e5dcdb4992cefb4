"""Which masked positions a denoising step commits: blocks, counts, scores, top-k.

Shared by every sampler so that their comparisons differ only in the rule.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax import warp

def generation_blocks(masked_BxL: jax.Array, block_length: int) -> jax.Array:
  """Semi-autoregressive blocks: the masked positions of each row, left to right, in chunks.

  Returns:
    int32[B, L]: block index of each initially masked position, -1 elsewhere.
    For the usual prompt-then-answer layout these are LLaDA's blocks.
  """
  order_BxL = jnp.cumsum(masked_BxL, axis=1) - 1
  return jnp.where(masked_BxL, order_BxL // block_length, -1).astype(jnp.int32)


def current_block(masked_BxL: jax.Array, block_BxL: jax.Array) -> jax.Array:
  """int32[B]: the lowest block that still has masks (a large number when none)."""
  big = jnp.iinfo(jnp.int32).max
  return jnp.min(jnp.where(masked_BxL, block_BxL, big), axis=1)


def commit_count(remaining_B: jax.Array, steps_left_B: jax.Array) -> jax.Array:
  """int32[B]: ceil(remaining / steps_left): an even split that ends on the last step."""
  steps_left_B = jnp.maximum(steps_left_B, 1)
  return ((remaining_B + steps_left_B - 1) // steps_left_B).astype(jnp.int32)


def scores(rule: str, log_probs_BxLxV: jax.Array, x0_BxL: jax.Array,
           uniform_BxL: jax.Array) -> jax.Array:
  """float32[B, L]: higher scores are committed (and ordered) first.

  Rules:
    confidence: probability of the proposed token `x0` (LLaDA's low-confidence
      re-masking keeps the low ones masked).
    entropy: negative entropy of the predictive distribution.
    position: leftmost first.
    random: uniformly random order: the uniforms `uniform_BxL[:, :L]` (drawn per
      row, so that rows stay independent; read only here) are the scores.
    dilated: a fixed order of the positions in which every prefix is spread evenly
      over the row (`dilated_order`): positions next to each other, which tend
      to depend on each other most, come far apart in it.
    parity: the even positions left to right, then the odd ones (`parity_order`).
  `position`, `random`, `dilated` and `parity` read only `x0_BxL`'s shape
  (`log_probs_BxLxV` may be None).
  """
  batch, length = x0_BxL.shape
  if rule == "confidence":
    return jnp.exp(jnp.take_along_axis(log_probs_BxLxV, x0_BxL[..., None], axis=-1)[..., 0])
  if rule == "entropy":
    return -warp.entropy(log_probs_BxLxV)
  if rule == "position":
    return -jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32), (batch, length))
  if rule == "random":
    return uniform_BxL[:, :length]
  if rule in FIXED_ORDERS:
    return -jnp.broadcast_to(FIXED_ORDERS[rule](length).astype(jnp.float32), (batch, length))
  raise ValueError(f"unknown score rule {rule!r}; expected one of {SCORE_RULES}")


def dilated_order(length: int) -> jax.Array:
  """int32[L]: each position's place in the dilated order: the bit reversal of its index.

  With `n` bits (`2**n >= L`), position `p` comes at the place given by `p`'s
  bits read backwards (places of a row shorter than `2**n` skip the unused ones):
  all even positions before the odd ones, within each parity those `= 0 mod 4`
  first, and so on, so that the first `k` positions of any run of consecutive
  positions are about `run / k` apart (the van der Corput sequence). Masked
  diffusion samplers that commit far-apart tokens together make fewer joint
  errors (Luxembourg et al., 2025, "Plan for Speed: Dilated Scheduling for
  Masked Diffusion Language Models"); for FeF the order changes nothing in the
  law (every order of the prefix factorization is exact for an exact denoiser)
  but drafts of far-apart positions are accepted more often, since a round
  stops at its first rejection.
  """
  bits = max(1, (length - 1).bit_length())
  index_L = jnp.arange(length, dtype=jnp.int32)
  return sum(((index_L >> bit) & 1) << (bits - 1 - bit) for bit in range(bits))


def parity_order(length: int) -> jax.Array:
  """int32[L]: each position's place in the parity order: the even positions left to
  right, then the odd ones.

  Like the dilated order's first level, no two positions next to each other are
  drafted together until one of them is decided; unlike it, each half runs left to
  right, so the targets of a round move forward through the row. That is what
  lets a block-causal denoiser verify a round's copies as one sequence and one
  attention block per copy (`cache="prefix"`, `fef_jax.samplers.shared_prefix`).
  """
  index_L = jnp.arange(length, dtype=jnp.int32)
  return jnp.where(index_L % 2 == 0, index_L // 2, (length + 1) // 2 + index_L // 2)


# One fixed order of the positions per name (`length -> int32[L]` places): each is a
# score rule (`select`) and a FeF order, and first-hitting in it is its one-token decoder.
FIXED_ORDERS = {"dilated": dilated_order, "parity": parity_order}
SCORE_RULES = ("confidence", "entropy", "position", "random", *FIXED_ORDERS)


def rank_by_score(scores_BxL: jax.Array, eligible_BxL: jax.Array) -> jax.Array:
  """int32[B, L]: rank of each eligible position by descending score; L for the others.

  Ties are broken towards the leftmost position. NaN scores (from NaN logits,
  which `fef_jax.sample` reports) rank last among the eligible positions, so a
  step still commits what its rule asks for and the loop always ends.
  """
  length = scores_BxL.shape[1]
  neg_scores_BxL = -scores_BxL.astype(jnp.float32)
  neg_scores_BxL = jnp.where(jnp.isnan(neg_scores_BxL), jnp.finfo(jnp.float32).max,
                             neg_scores_BxL)
  keyed_BxL = jnp.where(eligible_BxL, neg_scores_BxL, jnp.inf)
  order_BxL = jnp.argsort(keyed_BxL, axis=1, stable=True)
  rank_BxL = jnp.argsort(order_BxL, axis=1, stable=True).astype(jnp.int32)
  return jnp.where(eligible_BxL, rank_BxL, length)


def rank_left_to_right(eligible_BxL: jax.Array) -> jax.Array:
  """int32[B, L]: `rank_by_score` of the `position` scores, without sorting: an
  eligible position's rank is the number of eligible positions before it; L for the
  others."""
  rank_BxL = jnp.cumsum(eligible_BxL, axis=1, dtype=jnp.int32) - 1
  return jnp.where(eligible_BxL, rank_BxL, eligible_BxL.shape[1])


def best(scores_BxL: jax.Array, eligible_BxL: jax.Array) -> jax.Array:
  """int32[B]: the eligible position of highest score (the leftmost on ties), as
  `top_k` with `k = 1` chooses it for scores without NaN; 0 in rows with none
  eligible (callers mask those)."""
  return jnp.argmax(jnp.where(eligible_BxL, scores_BxL.astype(jnp.float32), -jnp.inf),
                    axis=1).astype(jnp.int32)


def top_k(scores_BxL: jax.Array, eligible_BxL: jax.Array, k_B: jax.Array) -> jax.Array:
  """bool[B, L]: the `k_b` eligible positions of highest score in each row."""
  return rank_by_score(scores_BxL, eligible_BxL) < k_B[:, None]


def sorted_prefix_size(values_BxL: jax.Array, eligible_BxL: jax.Array,
                       keep_fn) -> jax.Array:
  """int32[B]: the largest n such that `keep_fn(sorted values, n)` holds for all n' <= n.

  `values` are sorted in ascending order among eligible positions;
  `keep_fn(sorted_BxL, n_BxL)` returns bool[B, L], evaluated for prefixes of
  size n = 1..L. At least one position is always kept (when any is eligible).
  """
  length = values_BxL.shape[1]
  sorted_BxL = jnp.sort(jnp.where(eligible_BxL, values_BxL, jnp.inf), axis=1)
  n_BxL = jnp.broadcast_to(jnp.arange(1, length + 1), sorted_BxL.shape)
  ok_BxL = keep_fn(sorted_BxL, n_BxL) & (n_BxL <= jnp.sum(eligible_BxL, axis=1, keepdims=True))
  size_B = jnp.sum(jnp.cumprod(ok_BxL, axis=1), axis=1)
  return jnp.maximum(size_B, 1).astype(jnp.int32)
