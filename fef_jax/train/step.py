"""Train state, the jitted train step and the evaluation step.

The model enters as `apply_fn(params, tokens_BxL, valid_BxL, t_B) -> logits_BxLxV`
(float32 logits); with a speculative head (`LossConfig.head_weight > 0`) it also
takes the head's items, `apply_fn(params, tokens, valid, t, positions_BxK,
values_BxK, items_valid_BxK) -> (logits_BxLxV, head_logits_BxKxV)`, from one
backbone pass (`fef_jax.models.spec_head`). With `LossConfig.logits_chunk > 0`
it is called with `features=True` and returns what the chunked loss reads
instead of the logits: `(hidden_BxLxD, unembed_VxD)`, or with the head's items
`(hidden_BxLxD, unembed_VxD, head_logits_BxKxV)` (`make_apply_fn` builds such
an `apply_fn` for this package's models). Batches are dicts with `tokens`
int32[B, L] and optionally `valid` (not padding) and `maskable` (positions that
may be masked: the answer in prompt-conditioned training) bool[B, L].
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from fef_jax import losses
from fef_jax import schedules
from fef_jax.models import transformer
from fef_jax.train import causal_loss
from fef_jax.train import head_loss
from fef_jax.train import masking

ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
OBJECTIVES = ("diffusion", "causal")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """What the loss needs (static under jit).

  Attributes:
    mask_id: the mask token.
    schedule: masking schedule name (`fef_jax.schedules.get_schedule`).
    eps: smallest time of the ELBO integral.
    prefix_fraction: share of rows trained on prefix-revealed masks
      (`fef_jax.train.masking`).
    ema_decay: decay of the parameter EMA (0 disables the update).
    head_weight: weight of the speculative head's any-order AR cross-entropy
      (`fef_jax.train.head_loss`); 0 trains no head.
    head_items: items of the head's random order per row (0: `L`, every
      masked position); use at least the sampler's generation block length.
    logits_chunk: 0 computes the backbone's float32 logits [B, L, V] at once
      (kept for the backward pass); `C > 0` projects and scores `C` positions
      at a time from the final hidden states
      (`losses.chunked_masked_cross_entropy`), so that no more than
      [B, C, V] logits exist at once, for one more forward output projection.
      It covers the ELBO and prefix cross-entropy, which both sum the
      backbone's per-position cross-entropies; the speculative head's logits
      [B, head_items, V] are still computed whole. Needs an `apply_fn` that
      takes `features=True` (`make_apply_fn`).
    objective: `diffusion` (the above) or `causal`: next-token cross-entropy of a
      causal model (`fef_jax.train.causal_loss`; the text-quality judge), which
      uses no other field but `ema_decay` and computes whole logits.
  """
  mask_id: int
  schedule: str = "linear"
  eps: float = 1e-3
  prefix_fraction: float = 0.0
  ema_decay: float = 0.999
  head_weight: float = 0.0
  head_items: int = 0
  logits_chunk: int = 0
  objective: str = "diffusion"

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"LossConfig.objective must be one of {OBJECTIVES}, got "
                       f"{self.objective!r}")
    if not self.head_weight >= 0:
      raise ValueError(f"LossConfig.head_weight must be >= 0, got {self.head_weight!r}")
    for name in ("head_items", "logits_chunk"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"LossConfig.{name} must be an int >= 0 (0: every position), "
                         f"got {value!r}")


def make_apply_fn(model: nn.Module) -> ApplyFn:
  """The `ApplyFn` of a `Transformer` or `SpecHeadTransformer` (see the module docstring):
  the logits, with the head's items also the head's logits from the same backbone pass,
  and with `features=True` the final hidden states and output projection instead of
  the backbone's logits (`Transformer.features`)."""
  def apply(params, tokens_BxL, valid_BxL, t_B, *items, features=False):
    if features:
      method = "features_with_head" if items else "features"
    else:
      method = "with_head" if items else None
    return model.apply({"params": params}, tokens_BxL, valid_BxL, t_B, *items, method=method)
  return apply


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `key` is raw uint32 key data, so it checkpoints as an array."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  key: jax.Array


def create_train_state(params: Any, optimizer: optax.GradientTransformation,
                       key: jax.Array) -> TrainState:
  """A fresh state: step 0, optimizer initialized, EMA equal to the parameters."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    # A copy, so that a donating train step never sees one buffer twice.
                    ema_params=jax.tree.map(jnp.copy, params),
                    key=jax.random.key_data(key))


def _valid_and_maskable(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  tokens = batch["tokens"]
  valid = batch.get("valid", jnp.ones(tokens.shape, bool))
  maskable = batch.get("maskable", jnp.ones(tokens.shape, bool)) & valid
  return valid, maskable


def _takes_features(apply_fn: ApplyFn) -> bool:
  """Whether `apply_fn` accepts the keyword `features` (or any keyword)."""
  try:
    parameters = inspect.signature(apply_fn).parameters.values()
  except (TypeError, ValueError):  # no signature to read: let the call decide
    return True
  return any(p.name == "features" or p.kind == p.VAR_KEYWORD for p in parameters)


def loss_fn(params: Any, apply_fn: ApplyFn, batch: dict[str, jax.Array], key: jax.Array,
            config: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean training loss and metrics of one batch.

  Uniform-mask rows contribute the continuous-time ELBO (nats per maskable
  token); prefix-revealed rows the mean cross-entropy over their masked positions.
  With `head_weight > 0` every row adds `head_weight` times the head's mean
  any-order AR cross-entropy over its masked positions (metric `head_ce`).
  With `objective="causal"`, `causal_loss.loss_fn` instead (no masks, no key).
  """
  if config.objective == "causal":
    return causal_loss.loss_fn(params, apply_fn, batch)
  schedule = schedules.get_schedule(config.schedule)
  x0_BxL = batch["tokens"]
  valid_BxL, maskable_BxL = _valid_and_maskable(batch)
  if config.head_weight:
    key, items_key = jax.random.split(key)  # runs without a head keep their masks
  xt_BxL, t_B, is_prefix_B = masking.training_mask(
      key, x0_BxL, schedule, config.mask_id, prefix_fraction=config.prefix_fraction,
      eps=config.eps, maskable_BxL=maskable_BxL)
  items = ()
  if config.head_weight:
    items = head_loss.random_items(items_key, xt_BxL, x0_BxL, config.mask_id,
                                   config.head_items or x0_BxL.shape[1])
  # Chunked: (hidden_BxLxD, unembed_VxD[, head_logits_BxKxV]); otherwise logits_BxLxV,
  # or (logits_BxLxV, head_logits_BxKxV). `features` is passed only when asked for, so
  # an apply_fn without the keyword still serves the default loss.
  if config.logits_chunk and not _takes_features(apply_fn):
    raise ValueError(f"LossConfig.logits_chunk={config.logits_chunk} needs an apply_fn that "
                     f"takes features=True (step.make_apply_fn builds one)")
  outputs = apply_fn(params, xt_BxL, valid_BxL, t_B, *items,
                     **({"features": True} if config.logits_chunk else {}))
  if config.head_weight:
    head_ce_B = head_loss.any_order_cross_entropy(outputs[-1], items[1], items[2],
                                                  config.mask_id)
  if config.logits_chunk:
    ce_BxL = losses.chunked_masked_cross_entropy(
        functools.partial(transformer.project_logits, unembed_VxD=outputs[1]),
        outputs[0], x0_BxL, xt_BxL, config.mask_id, config.logits_chunk)
    elbo_B = losses.continuous_elbo_from_cross_entropy(ce_BxL, t_B, schedule, eps=config.eps,
                                                       maskable_BxL=maskable_BxL)
  else:
    logits_BxLxV = outputs[0] if items else outputs
    elbo_B = losses.continuous_elbo(logits_BxLxV, x0_BxL, xt_BxL, t_B, schedule,
                                    config.mask_id, eps=config.eps, maskable_BxL=maskable_BxL)
    ce_BxL = losses.masked_cross_entropy(logits_BxLxV, x0_BxL, xt_BxL, config.mask_id)
  num_masked_B = jnp.sum(xt_BxL == config.mask_id, axis=1)
  prefix_ce_B = jnp.sum(ce_BxL, axis=1) / jnp.maximum(num_masked_B, 1)
  loss_B = jnp.where(is_prefix_B, prefix_ce_B, elbo_B)
  head_metrics = {}
  if config.head_weight:
    loss_B = loss_B + config.head_weight * head_ce_B
    head_metrics["head_ce"] = jnp.mean(head_ce_B)
  uniform_B = (~is_prefix_B).astype(jnp.float32)
  metrics = {
      **head_metrics,
      "loss": jnp.mean(loss_B),
      "elbo_bits": losses.nats_to_bits(
          jnp.sum(elbo_B * uniform_B) / jnp.maximum(jnp.sum(uniform_B), 1.0)),
      "masked_fraction": jnp.sum(num_masked_B) / jnp.maximum(jnp.sum(maskable_BxL), 1),
  }
  return metrics["loss"], metrics


def train_step(state: TrainState, batch: dict[str, jax.Array], *, apply_fn: ApplyFn,
               optimizer: optax.GradientTransformation, config: LossConfig,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update (one micro-batch when accumulating). Pure; jit it with
  `apply_fn`, `optimizer`, `config` and `skip_nonfinite` bound (e.g. `functools.partial`).

  With `skip_nonfinite`, a step whose loss or gradient norm is NaN or infinite
  changes nothing but the step counter and the PRNG key: parameters, optimizer
  state (gradient accumulators included) and EMA stay those of `state`, and
  `metrics["skipped"]` is 1.0 (0.0 otherwise). Without it such a step's
  update is applied as computed (the caller stops the run; see
  `fef_jax.train.divergence`).
  """
  key, step_key = jax.random.split(jax.random.wrap_key_data(state.key))
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, apply_fn, batch, step_key, config)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = jax.tree.map(
      lambda e, p: config.ema_decay * e + (1.0 - config.ema_decay) * p,
      state.ema_params, params)
  metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  if skip_nonfinite:
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    params, opt_state, ema_params = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state, ema_params), (state.params, state.opt_state, state.ema_params))
    metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema_params, key=jax.random.key_data(key))
  return new_state, metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array], **step_kwargs
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """`K` consecutive `train_step`s in one call: a `lax.scan` over the leading axis of
  every `batches[name]` (`[K, B, ...]`), with `step_kwargs` those of `train_step`.

  What a call costs besides its steps (dispatch, the batch's transfer, the runtime's
  allocation of the call's buffers, which on CPUs page-faults them in afresh) is then
  paid once per `K` steps. The math is that of `K` calls of `train_step` on
  `batches[name][i]`, in order.

  Returns:
    (the state after the `K` steps, each metric stacked per step: shape `[K]`).
  """
  return jax.lax.scan(functools.partial(train_step, **step_kwargs), state, batches)


def eval_step(params: Any, batch: dict[str, jax.Array], key: jax.Array, *,
              apply_fn: ApplyFn, config: LossConfig) -> dict[str, jax.Array]:
  """ELBO on uniform masks: bits per token and the perplexity bound (fixed `key` for
  comparable evaluations); for `objective="causal"` the exact NLL and perplexity."""
  if config.objective == "causal":
    return causal_loss.eval_metrics(params, apply_fn, batch)
  uniform = dataclasses.replace(config, prefix_fraction=0.0, head_weight=0.0)
  _, metrics = loss_fn(params, apply_fn, batch, key, uniform)
  nats = metrics["elbo_bits"] * jnp.log(2.0)
  return {"elbo_bits": metrics["elbo_bits"], "perplexity_bound": losses.perplexity_bound(nats)}
