"""Next-token cross-entropy of a causal model: the training loss of the judge.

A causal model is a `Transformer` with `attention="block_causal", block_length=1`:
position `i` attends to positions `<= i`, so its logits are a function of `x[<=i]`
and here predict `x[i+1]`. The first token of a row is never predicted. There is
no BOS token, so the model only ever reads ordinary ids of the data's vocabulary:
nothing is masked, and the mask id never enters (`fef_jax.eval.judge` scores
finished samples the same way).

Batches are the training loop's dicts: `tokens` int32[B, L] and optionally
`valid` bool[B, L] (not padding); a target is scored when it and every token it
is conditioned on are valid (right padding, as the data pipeline writes it).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def next_token_nll(logits_BxLxV: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
  """float32[B, L - 1]: `-log p(x[i+1] | x[<=i])` read off the logits at positions `0..L-2`.

  Args:
    logits_BxLxV: a causal model's logits on `tokens_BxL` (position `i` sees `x[<=i]`).
    tokens_BxL: int token ids in `[0, V)`.
  """
  log_probs_BxMxV = jax.nn.log_softmax(logits_BxLxV[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs_BxMxV, tokens_BxL[:, 1:, None], axis=-1)[..., 0]


def _scored_nll(params: Any, apply_fn: ApplyFn,
                batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(summed NLL in nats of the scored targets, their number)."""
  tokens_BxL = batch["tokens"]
  valid_BxL = batch.get("valid", jnp.ones(tokens_BxL.shape, bool))
  logits_BxLxV = apply_fn(params, tokens_BxL, valid_BxL, None)
  scored_BxM = jnp.cumprod(valid_BxL, axis=1)[:, 1:].astype(jnp.float32)
  return jnp.sum(next_token_nll(logits_BxLxV, tokens_BxL) * scored_BxM), jnp.sum(scored_BxM)


def loss_fn(params: Any, apply_fn: ApplyFn,
            batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(mean NLL in nats per scored target, metrics `loss` and `nll_bits`).

  `apply_fn(params, tokens_BxL, valid_BxL, None)` must be a causal model (see the
  module docstring); it gets no diffusion time. Deterministic: no key.
  """
  total, count = _scored_nll(params, apply_fn, batch)
  mean = total / jnp.maximum(count, 1.0)
  return mean, {"loss": mean, "nll_bits": mean / math.log(2.0)}


def eval_metrics(params: Any, apply_fn: ApplyFn,
                 batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Held-out `nll_bits` per token and `perplexity` (`exp` of the NLL in nats)."""
  _, metrics = loss_fn(params, apply_fn, batch)
  return {"nll_bits": metrics["nll_bits"],
          "perplexity": jnp.exp(metrics["nll_bits"] * math.log(2.0))}
