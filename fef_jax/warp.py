"""Logit warping shared by drafts and targets: temperature, top-k, top-p.

Speculative acceptance `min(1, p/q)` is exact for the *warped* target only when
the draft is warped the same way, so every sampler goes through this function.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def warp_log_probs(logits_xV: jax.Array, *, mask_id: int,
                   temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> jax.Array:
  """Normalized log-probabilities of the sampling distribution over the vocabulary.

  Args:
    logits_xV: float[..., V] raw denoiser logits.
    mask_id: the mask token; if `0 <= mask_id < V` its logit is removed (the mask
      is never sampled). Ids outside `[0, V)` are ignored here.
    temperature: softmax temperature; 0 means greedy (a point mass at the
      argmax, ties broken towards the lowest id).
    top_k: keep the k most likely tokens (0 keeps all); tokens tied with the
      k-th largest logit are kept too.
    top_p: keep the smallest set of most likely tokens with mass >= top_p.

  Returns:
    float32[..., V] log-probabilities (-inf outside the support), summing to 1.
    Arguments are static Python numbers; they are validated by `fef_jax.sample`.
  """
  vocab_size = logits_xV.shape[-1]
  logits = logits_xV.astype(jnp.float32)
  if 0 <= mask_id < vocab_size:
    logits = logits.at[..., mask_id].set(_NEG_INF)
  if temperature == 0.0:
    greedy = jax.nn.one_hot(jnp.argmax(logits, axis=-1), vocab_size, dtype=bool)
    return jnp.where(greedy, 0.0, _NEG_INF)
  logits = logits / temperature
  if 0 < top_k < vocab_size:
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, _NEG_INF, logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  if top_p < 1.0:
    sorted_desc = -jnp.sort(-log_probs, axis=-1)
    mass_before = jnp.cumsum(jnp.exp(sorted_desc), axis=-1) - jnp.exp(sorted_desc)
    # The smallest log-prob that is still needed to reach top_p mass.
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_desc, jnp.inf),
                     axis=-1, keepdims=True)
    log_probs = jax.nn.log_softmax(
        jnp.where(log_probs < cutoff, _NEG_INF, log_probs), axis=-1)
  return log_probs


def entropy(log_probs_xV: jax.Array) -> jax.Array:
  """Shannon entropy in nats of normalized log-probabilities (-inf entries allowed)."""
  probs = jnp.exp(log_probs_xV)
  return -jnp.sum(jnp.where(probs > 0, probs * log_probs_xV, 0.0), axis=-1)
