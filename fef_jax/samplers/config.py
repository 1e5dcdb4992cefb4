"""Sampler options: one frozen, hashable config shared by every sampler, and its checks."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

from fef_jax import schedules
from fef_jax.samplers.selection import FIXED_ORDERS, SCORE_RULES

METHODS = ("ancestral", "confidence", "threshold", "eb", "first_hitting",
           "random_sizes", "fef")
ORDERS = ("left_to_right", "confidence", "random", *FIXED_ORDERS)
MODES = ("commit_set", "joint_then_remask")
CACHE_MODES = ("none", "exact", "approximate", "prefix")
VERIFIERS = ("copies", "head")
DRAFTERS = ("marginals", "head")

_COMMON = ("steps", "block_length", "temperature", "top_k", "top_p")
METHOD_OPTIONS = {
    "ancestral": _COMMON + ("schedule",),
    "confidence": _COMMON + ("select",),
    "threshold": ("block_length", "temperature", "top_k", "top_p", "threshold", "factor"),
    "eb": ("block_length", "temperature", "top_k", "top_p", "gamma"),
    "first_hitting": ("block_length", "temperature", "top_k", "top_p", "select"),
    "random_sizes": _COMMON + ("select",),
    "fef": _COMMON + ("select", "order", "window", "mode", "cache",
                    "refresh_every", "verifier", "drafter"),
}
DEFAULT_SELECT = {"confidence": "confidence", "first_hitting": "random",
                  "random_sizes": "confidence", "fef": "confidence"}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Every sampler option, resolved and checked. Hashable, so usable as a jit static.

  Attributes:
    method: one of `METHODS`.
    mask_id: the mask token id.
    steps: denoising steps over the whole answer (split evenly over blocks);
      None: one token per step, except FeF, which then decides each block in a
      single exact step.
    block_length: semi-autoregressive block length in masked positions
      (None: one block).
    temperature, top_k, top_p: the logit warp applied to drafts and targets alike.
    select: score rule choosing which positions a step commits (see
      `selection.scores`).
    order: FeF: order of a step's set in the prefix factorization: left to
      right, by the confidence of a proposal (`select="confidence"`'s scores),
      random, or `dilated` (far-apart positions first, `selection.dilated_order`,
      so that a round's drafts depend less on each other), or `parity` (the even
      positions left to right, then the odd ones, `selection.parity_order`: far
      apart as the dilated order's first level, and moving forward through the
      row as `cache="prefix"` needs).
    window: FeF: drafts verified per round (copies per batched call).
    mode: FeF: `commit_set` or `joint_then_remask` (see DESIGN.md).
    cache: FeF: `none` (every round evaluates `window` whole sequences),
      `exact` (rounds evaluate the copies over one attention block against
      cached keys and values; needs `block_length` and a denoiser with an exact
      cache) or `approximate` (the same over the generation block against a
      stale "dual" cache of a bidirectional denoiser: fast, no longer exact);
      see `fef_jax.samplers.cache`; or `prefix` (a block-causal denoiser: each
      round evaluates the state with all its drafts once and each copy's target
      block against its keys and values, exact, with sets over any number of
      attention blocks; rounds stop where the order steps back to an earlier
      block; see `fef_jax.samplers.shared_prefix`).
    refresh_every: FeF with `cache="approximate"`: also refresh the cache
      before every `refresh_every`-th round against it (0: only on entering
      a block).
    verifier: FeF: `copies` (targets from `window` prefix-revealed copies of the
      denoiser: the denoiser's own prefix factorization) or `head` (targets
      from one pass of a causal head per round, the backbone run once per step:
      the head's joint; needs a head denoiser, see `fef_jax.samplers.head`).
    drafter: FeF: `marginals` (each round drafts its `window` targets
      independently from the denoiser's marginals) or `head` (a causal head drafts the
      round's `window` targets one after another, each conditioned on the
      drafts before it; the copies still verify, so the set is an exact draw of
      the denoiser's prefix factorization whatever the head; needs a head
      denoiser and `verifier="copies"`, and `cache="none"` or `"exact"`, where
      the head reads the block-local hidden states of each step's state,
      `block_hidden`).
    threshold: Fast-dLLM: commit positions whose confidence exceeds it.
    factor: Fast-dLLM factor rule: commit the largest n with (n+1)(1-c_n) < factor.
    gamma: EB: entropy budget (sum of entropies minus the largest).
    schedule: ancestral: masking schedule name.
  """
  method: str
  mask_id: int
  steps: Optional[int] = None
  block_length: Optional[int] = None
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  select: str = "confidence"
  order: str = "left_to_right"
  window: int = 16
  mode: str = "commit_set"
  cache: str = "none"
  refresh_every: int = 0
  verifier: str = "copies"
  drafter: str = "marginals"
  threshold: float = 0.9
  factor: Optional[float] = None
  gamma: float = 0.1
  schedule: str = "linear"


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) or (
      hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0
      and str(value.dtype).startswith(("int", "uint")))


def _is_real(value: Any) -> bool:
  return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))


def make_config(method: str, mask_id: int, **options: Any) -> SamplerConfig:
  """Checks a method name and its options and returns the resolved config.

  Configs already checked come from a cache: checking costs ~15 us, about 1% of a
  10-token answer of the comparison's model at batch 1, on every `fef_jax.sample`
  call. Each value's type is part of the cache key, so `steps=True` is still
  refused after `steps=1` was accepted; failures are never cached.

  Raises:
    ValueError: unknown method, or an option value out of range (the message
      names the option and the valid range).
    TypeError: an option that the method does not take (the message lists the
      ones it does).
  """
  key = (method, type(mask_id), mask_id,
         tuple(sorted((name, type(value), value) for name, value in options.items())))
  try:
    hash(key)
  except TypeError:  # an unhashable value: checked (and refused) without the cache
    return _checked_config(method, mask_id, options)
  return _cached_config(key)


@functools.lru_cache(maxsize=256)
def _cached_config(key: tuple[Any, ...]) -> SamplerConfig:
  method, _, mask_id, options = key
  return _checked_config(method, mask_id, {name: value for name, _, value in options})


def _checked_config(method: str, mask_id: int, options: dict[str, Any]) -> SamplerConfig:
  """`make_config`'s checks and resolution, uncached."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  unknown = sorted(set(options) - set(METHOD_OPTIONS[method]))
  if unknown:
    raise TypeError(f"method={method!r} takes no option(s) {unknown}; "
                    f"valid options: {sorted(METHOD_OPTIONS[method])}")
  _check(_is_int(mask_id) and int(mask_id) >= 0,
         f"mask_id must be a non-negative integer, got {mask_id!r}")
  values = dict(options)
  values.setdefault("select", DEFAULT_SELECT.get(method, "confidence"))
  config = SamplerConfig(method=method, mask_id=int(mask_id), **values)

  for name in ("steps", "block_length"):
    value = getattr(config, name)
    _check(value is None or (_is_int(value) and int(value) >= 1),
           f"{name} must be a positive integer or None, got {value!r}")
  _check(_is_real(config.temperature) and config.temperature >= 0,
         f"temperature must be a finite number >= 0, got {config.temperature!r}")
  _check(_is_int(config.top_k) and config.top_k >= 0,
         f"top_k must be an integer >= 0 (0 keeps all tokens), got {config.top_k!r}")
  _check(_is_real(config.top_p) and 0 < config.top_p <= 1,
         f"top_p must lie in (0, 1], got {config.top_p!r}")
  _check(config.select in SCORE_RULES,
         f"unknown select rule {config.select!r}; expected one of {SCORE_RULES}")
  _check(config.order in ORDERS, f"unknown order {config.order!r}; expected one of {ORDERS}")
  _check(config.mode in MODES, f"unknown mode {config.mode!r}; expected one of {MODES}")
  _check(config.cache in CACHE_MODES,
         f"unknown cache {config.cache!r}; expected one of {CACHE_MODES}")
  _check(config.cache in ("none", "prefix") or config.block_length is not None,
         f"cache={config.cache!r} needs block_length: the cache holds the positions "
         f"outside the current block, so without blocks there is nothing to cache")
  _check(_is_int(config.refresh_every) and config.refresh_every >= 0,
         f"refresh_every must be an integer >= 0, got {config.refresh_every!r}")
  _check(config.refresh_every == 0 or config.cache == "approximate",
         f"refresh_every={config.refresh_every} only applies to cache='approximate' "
         f"(got cache={config.cache!r})")
  _check(config.verifier in VERIFIERS,
         f"unknown verifier {config.verifier!r}; expected one of {VERIFIERS}")
  _check(config.verifier == "copies" or config.cache == "none",
         "verifier='head' takes no cache: the backbone runs once per step and each "
         "round runs only the head; use cache='none'")
  _check(config.drafter in DRAFTERS,
         f"unknown drafter {config.drafter!r}; expected one of {DRAFTERS}")
  _check(config.drafter == "marginals" or (config.verifier == "copies"
                                           and config.cache in ("none", "exact")),
         f"drafter='head' drafts for the copies' verification, whole or over the exact "
         f"cache; got verifier={config.verifier!r}, cache={config.cache!r} (use "
         f"verifier='copies', cache='none' or 'exact')")
  _check(_is_int(config.window) and config.window >= 1,
         f"window must be an integer >= 1, got {config.window!r}")
  _check(_is_real(config.threshold) and 0 < config.threshold <= 1,
         f"threshold must lie in (0, 1], got {config.threshold!r}")
  _check(config.factor is None or (_is_real(config.factor) and config.factor > 0),
         f"factor must be a number > 0 or None, got {config.factor!r}")
  _check(_is_real(config.gamma) and config.gamma >= 0,
         f"gamma must be a finite number >= 0, got {config.gamma!r}")
  schedules.get_schedule(config.schedule)  # raises on an unknown name
  return dataclasses.replace(
      config, temperature=float(config.temperature), top_p=float(config.top_p),
      top_k=int(config.top_k), window=int(config.window),
      refresh_every=int(config.refresh_every),
      threshold=float(config.threshold), gamma=float(config.gamma),
      factor=None if config.factor is None else float(config.factor),
      steps=None if config.steps is None else int(config.steps),
      block_length=None if config.block_length is None else int(config.block_length))
