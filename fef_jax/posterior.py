"""The prefix-factorized clean posterior.

An ordered set of positions `s_1..s_k` of a partially masked sequence `xt` is
described per row by `rank_BxL`: `rank[b, i] = j` if position `i` is `s_(j+1)`
of row `b`, and `rank[b, i] = NOT_IN_SET` (any value >= L) otherwise. By the chain
rule `p(x^S | xt) = prod_j p(x^{s_j} | xt, x^{s_1..s_(j-1)})`; each factor is the
denoiser run on a *prefix-revealed copy* of `xt`. These functions build the
copies for all rows at once and evaluate them in one batched denoiser call.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]


def not_in_set(length: int) -> int:
  """The rank given to positions outside the ordered set (sorts after all ranks)."""
  return length


def positions_by_rank(rank_BxL: jax.Array) -> jax.Array:
  """int32[B, L]: positions sorted by rank; the first `k_b` entries are the set."""
  return jnp.argsort(rank_BxL, axis=-1, stable=True).astype(jnp.int32)


def positions_of_ranks(rank_BxL: jax.Array, ranks_BxW: jax.Array) -> jax.Array:
  """int32[B, W]: the position holding each rank of `ranks_BxW` (as `positions_by_rank`
  at those ranks, without a sort); 0 for a rank no position holds."""
  return jnp.argmax(rank_BxL[:, None, :] == ranks_BxW[:, :, None], axis=-1).astype(jnp.int32)


def prefix_revealed_copies(tokens_BxL: jax.Array, values_BxL: jax.Array,
                           rank_BxL: jax.Array, start_B: jax.Array,
                           num_copies: int, last_copy_B: jax.Array | None = None
                           ) -> jax.Array:
  """Copies whose `c`-th member reveals the `c` set positions after `start`.

  Args:
    tokens_BxL: the current state (masked where undecided).
    values_BxL: proposed values; only positions in the set are read.
    rank_BxL: rank of each position in the ordered set (see module docstring).
    start_B: the first undecided rank of each row.
    num_copies: static number of copies `W`.
    last_copy_B: optional int[B]: the copies after it repeat it.

  Returns:
    int32[B, W, L]: copy `c` equals `tokens` with the positions of rank
    `start..start+r-1` set to `values`, `r = min(c, last_copy)`; copy 0 is
    `tokens` itself.
  """
  offset_BxL = rank_BxL - start_B[:, None]
  reveal_W = jnp.arange(num_copies)
  reveal_BxW = (reveal_W[None, :] if last_copy_B is None
                else jnp.minimum(reveal_W[None, :], last_copy_B[:, None]))
  reveal_BxWxL = ((offset_BxL[:, None, :] >= 0)
                  & (offset_BxL[:, None, :] < reveal_BxW[:, :, None]))
  return jnp.where(reveal_BxWxL, values_BxL[:, None, :], tokens_BxL[:, None, :])


def evaluate_copies(logits_fn: LogitsFn, copies_BxWxL: jax.Array) -> jax.Array:
  """One batched denoiser call over all copies: float[B, W, L, V]."""
  batch, num_copies, length = copies_BxWxL.shape
  logits_NxLxV = logits_fn(copies_BxWxL.reshape(batch * num_copies, length))
  return logits_NxLxV.reshape(batch, num_copies, length, -1)


def span_of(values_BxWxL: jax.Array, offset_B: jax.Array, span: int) -> jax.Array:
  """`[B, W, span]`: positions `offset_b .. offset_b + span - 1` of every copy of row `b`.

  `offset + span <= L` is required (`lax.dynamic_slice` clamps a later offset).
  """
  return jax.vmap(lambda v, o: jax.lax.dynamic_slice_in_dim(v, o, span, axis=1))(
      values_BxWxL, offset_B)


def write_span(values_BxLxV: jax.Array, span_BxSxV: jax.Array,
               offset_B: jax.Array) -> jax.Array:
  """`values` with positions `offset_b .. offset_b + S - 1` of row `b` replaced by `span`."""
  return jax.vmap(lambda v, u, o: jax.lax.dynamic_update_slice_in_dim(v, u, o, axis=0))(
      values_BxLxV, span_BxSxV, offset_B)


def gather_targets(copy_logits_BxWxLxV: jax.Array,
                   positions_BxW: jax.Array) -> jax.Array:
  """float[B, W, V]: the logits of copy `c` at its target position `positions[b, c]`.

  `copy_logits` may cover a span of `S` positions (`float[B, W, S, V]`), with
  `positions` counted from the span's start.
  """
  index_BxWx1x1 = positions_BxW[:, :, None, None]
  return jnp.take_along_axis(copy_logits_BxWxLxV, index_BxWx1x1, axis=2)[:, :, 0]


def joint_log_prob(logits_fn: LogitsFn, tokens_BxL: jax.Array,
                   values_BxL: jax.Array, rank_BxL: jax.Array,
                   log_prob_fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Exact log p(x^S = values | tokens) under the prefix factorization.

  Evaluates all `L` prefix-revealed copies in one call of `B * L` sequences and
  sums the log-probability of each set position's value under its factor.

  Args:
    logits_fn: denoiser, int32[N, L] -> float[N, L, V].
    tokens_BxL: the conditioning state `xt`.
    values_BxL: the assignment (read at set positions only).
    rank_BxL: the ordered set (ranks `0..k_b-1`, `>= L` outside the set).
    log_prob_fn: maps raw logits float[..., V] to normalized log-probabilities
      (e.g. `functools.partial(warp_log_probs, mask_id=...)`).

  Returns:
    float32[B]: the joint log-probability; 0 for an empty set.
  """
  length = tokens_BxL.shape[1]
  start_B = jnp.zeros(tokens_BxL.shape[:1], jnp.int32)
  copies = prefix_revealed_copies(tokens_BxL, values_BxL, rank_BxL, start_B, length)
  positions_BxW = positions_by_rank(rank_BxL)
  target_logp_BxWxV = log_prob_fn(
      gather_targets(evaluate_copies(logits_fn, copies), positions_BxW))
  value_BxW = jnp.take_along_axis(values_BxL, positions_BxW, axis=1)
  factor_BxW = jnp.take_along_axis(target_logp_BxWxV, value_BxW[..., None], axis=-1)[..., 0]
  in_set_BxW = jnp.take_along_axis(rank_BxL, positions_BxW, axis=1) < length
  return jnp.sum(jnp.where(in_set_BxW, factor_BxW, 0.0), axis=-1)
