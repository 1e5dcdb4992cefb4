"""Training masks: uniform (MDLM) masks plus the prefix-revealed masks that FeF verification shows.

A verification round evaluates the state `xt` with the first `c` positions of the
step's ordered set revealed. To make those inputs in-distribution, a fraction of
the rows is trained on *prefix-revealed* masks: draw a uniform mask at time `t`,
then reveal the `c` leftmost masked positions (the left-to-right order FeF uses
by default), `c ~ Uniform{0..n_masked - 1}`. Those rows' loss is the mean
cross-entropy over the positions left masked (it is not an ELBO term); the
ELBO, reported for evaluation, uses uniform masks only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fef_jax import forward
from fef_jax import schedules


def reveal_masked_prefix(key: jax.Array, xt_BxL: jax.Array, x0_BxL: jax.Array,
                         mask_id: int) -> jax.Array:
  """Reveals the `c_b` leftmost masked positions of each row, `c_b ~ U{0..n_b - 1}`.

  Rows with no mask are returned unchanged. At least one position stays masked
  in every row that had one.
  """
  masked_BxL = xt_BxL == mask_id
  num_masked_B = jnp.sum(masked_BxL, axis=1)
  uniform_B = jax.random.uniform(key, num_masked_B.shape)
  reveal_B = jnp.floor(uniform_B * num_masked_B).astype(jnp.int32)
  rank_BxL = jnp.cumsum(masked_BxL, axis=1) - 1
  reveal_BxL = masked_BxL & (rank_BxL < reveal_B[:, None])
  return jnp.where(reveal_BxL, x0_BxL, xt_BxL)


def training_mask(key: jax.Array, x0_BxL: jax.Array, schedule: schedules.Schedule,
                  mask_id: int, *, prefix_fraction: float, eps: float = 1e-3,
                  maskable_BxL: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Masks a batch for training.

  Args:
    key: PRNG key.
    x0_BxL: clean tokens.
    schedule: masking schedule.
    mask_id: the mask token.
    prefix_fraction: probability that a row gets a prefix-revealed mask (0: pure MDLM).
    eps: smallest time.
    maskable_BxL: positions that may be masked (answers in SFT); None: all.

  Returns:
    (xt_BxL, t_B, is_prefix_B): masked tokens, times, and which rows carry a
    prefix-revealed mask.
  """
  time_key, mask_key, choose_key, prefix_key = jax.random.split(key, 4)
  batch = x0_BxL.shape[0]
  t_B = forward.sample_times(time_key, batch, eps=eps)
  xt_BxL = forward.q_sample(mask_key, x0_BxL, t_B, schedule, mask_id, maskable_BxL)
  is_prefix_B = jax.random.uniform(choose_key, (batch,)) < prefix_fraction
  prefixed_BxL = reveal_masked_prefix(prefix_key, xt_BxL, x0_BxL, mask_id)
  return jnp.where(is_prefix_B[:, None], prefixed_BxL, xt_BxL), t_B, is_prefix_B
