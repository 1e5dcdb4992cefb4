"""Exact denoisers for distributions whose conditionals are known in closed form.

An oracle is a distribution over sequences `x in {0..V-1}^L` together with a
denoiser `logits_fn(tokens_NxL) -> float32[N, L, V]` whose output at every masked
position (token `mask_id == V`) is the exact log-conditional
`log p(x^i | unmasked tokens of the row)`. Samplers run on an oracle must then
reproduce the oracle's joint exactly; `fef_jax.stats` measures how close they get.

Conventions shared by every oracle:
- At an unmasked position the output is the one-hot log-probability of the token
  there: 0 at the token, -inf elsewhere.
- Impossible evidence: when the unmasked tokens of a row have probability 0 (an
  inexact sampler can commit such a combination), the row's masked positions get
  all-zero logits (the uniform distribution) instead of NaN. Samplers therefore
  keep running; the resulting samples fail the goodness-of-fit tests.
- Tokens must lie in `[0, V]` (`V` = mask). Other values are not checked (the
  functions are traced) and give unspecified results.
- Oracles are immutable, hashable by identity and hold `jnp` arrays, so
  `oracle.logits_fn` can be called inside `jax.jit` or passed as a static argument.
  `logits_fn`, `log_prob` and `marginals` are themselves jitted with the oracle
  as a static argument (compiled once per oracle and input shape; the compilation
  cache keeps the oracle alive). Constructors validate their inputs on the host
  and so need concrete arrays.
- Rows are processed in chunks of `rows_per_chunk` (`jax.lax.map` with
  `batch_size`), so that 10^5..10^6 rows fit in a bounded amount of memory. `None`
  picks a chunk from a budget of `_CHUNK_ELEMENTS` floats per intermediate array.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_MAX_STATES = 2**16
_CHUNK_ELEMENTS = 2**22
_SUM_TOLERANCE = 1e-5
_HIGHEST = jax.lax.Precision.HIGHEST
# Methods compiled once per oracle instance (hashable by identity).
_jit_method = functools.partial(jax.jit, static_argnums=0)


def _as_key(key_or_seed: jax.Array | int) -> jax.Array:
  """A PRNG key from a key or an integer seed."""
  if isinstance(key_or_seed, (int, np.integer)):
    return jax.random.key(int(key_or_seed))
  return key_or_seed


def _check_positive_int(name: str, value: int) -> int:
  """`value` as an int; ValueError unless it is an integer >= 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
  return int(value)


def _check_distribution(name: str, array: np.ndarray, axis: int | None) -> np.ndarray:
  """Validates probabilities summing to 1 over `axis` (None: all); float64, renormalized.

  Raises:
    ValueError: non-finite or negative entries, or sums off 1 by more than 1e-5.
  """
  array = np.asarray(array, np.float64)
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} has non-finite entries.")
  if np.any(array < 0):
    raise ValueError(f"{name} has negative entries (min {array.min():.3g}).")
  sums = array.sum(axis=axis, keepdims=True)
  worst = float(np.max(np.abs(sums - 1.0)))
  if worst > _SUM_TOLERANCE:
    what = "entries" if axis is None else "rows"
    raise ValueError(f"{name} {what} must sum to 1 (within {_SUM_TOLERANCE}); "
                     f"off by up to {worst:.3g}.")
  return array / sums


def _check_pair(i: int, j: int, length: int) -> None:
  """ValueError unless `i`, `j` are distinct positions in `[0, length)`."""
  for name, value in (("i", i), ("j", j)):
    if not isinstance(value, (int, np.integer)) or not 0 <= value < length:
      raise ValueError(f"pair_marginal: {name}={value!r} is not a position in "
                       f"[0, {length}).")
  if i == j:
    raise ValueError(f"pair_marginal needs two different positions, got i = j = {i}.")


def _check_tokens(tokens_NxL: jax.Array, length: int) -> jax.Array:
  """`tokens_NxL` as int32; ValueError unless it is an integer [N, length] array."""
  tokens_NxL = jnp.asarray(tokens_NxL)
  if tokens_NxL.ndim != 2 or tokens_NxL.shape[1] != length:
    raise ValueError(f"tokens must have shape [N, {length}], got {tokens_NxL.shape}.")
  if not jnp.issubdtype(tokens_NxL.dtype, jnp.integer):
    raise ValueError(f"tokens must be integers, got dtype {tokens_NxL.dtype}.")
  return tokens_NxL.astype(jnp.int32)


def _map_rows(row_fn: Callable[[jax.Array], jax.Array], tokens_NxL: jax.Array,
              rows_per_chunk: int) -> jax.Array:
  """`row_fn` over the rows of `tokens_NxL`, vmapped over chunks of rows."""
  return jax.lax.map(row_fn, tokens_NxL, batch_size=rows_per_chunk)


def _conditional_logits(tokens_L: jax.Array, posterior_LxV: jax.Array,
                        possible: jax.Array) -> jax.Array:
  """float32[L, V] denoiser output of one row.

  Args:
    tokens_L: the row; `V` (= posterior_LxV.shape[1]) marks masked positions.
    posterior_LxV: normalized conditionals of every position given the row's
      unmasked tokens (only read at masked positions).
    possible: bool scalar, whether the unmasked tokens have positive probability.

  Returns:
    log posterior at masked positions (0 everywhere if not `possible`), and the
    one-hot log-probability (0 at the token, -inf elsewhere) at unmasked ones.
  """
  vocab_size = posterior_LxV.shape[1]
  revealed_L = tokens_L != vocab_size
  onehot_LxV = jax.nn.one_hot(tokens_L, vocab_size, dtype=jnp.bool_)
  revealed_logits_LxV = jnp.where(onehot_LxV, 0.0, -jnp.inf)
  masked_logits_LxV = jnp.where(possible, jnp.log(posterior_LxV), 0.0)
  return jnp.where(revealed_L[:, None], revealed_logits_LxV,
                   masked_logits_LxV).astype(jnp.float32)


def _safe_normalize(values: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
  """(values / their sum over `axis`, the sum); all-zero slices stay zero, never NaN."""
  total = values.sum(axis=axis, keepdims=True)
  return values / jnp.where(total > 0, total, 1.0), total


@dataclasses.dataclass(frozen=True, eq=False)
class JointTable:
  """An explicit joint distribution over `L` tokens from a vocabulary of `V`.

  Attributes:
    probs: float32[V, ..., V] (L axes): P(x_0 = a_0, ..., x_{L-1} = a_{L-1}).
    rows_per_chunk: rows processed together by `logits_fn` (None: automatic).

  Raises (construction):
    ValueError: probs with no axes, unequal axes, negative or non-finite entries,
      not summing to 1 within 1e-5, or more than 2^16 states.
  """
  probs: jax.Array
  rows_per_chunk: int | None = None
  _log_probs_S: jax.Array = dataclasses.field(init=False, repr=False)
  _onehot_states_SxLV: jax.Array = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    probs = np.asarray(self.probs)
    if probs.ndim < 1:
      raise ValueError("JointTable probs needs at least one axis (one per position).")
    if len(set(probs.shape)) != 1:
      raise ValueError(f"JointTable probs axes must all have the vocabulary size; "
                       f"got shape {probs.shape}.")
    if probs.size > _MAX_STATES:
      raise ValueError(f"JointTable has {probs.size} states (V^L); at most "
                       f"{_MAX_STATES} are supported.")
    probs = _check_distribution("JointTable probs", probs, axis=None)
    if self.rows_per_chunk is not None:
      _check_positive_int("rows_per_chunk", self.rows_per_chunk)
    vocab_size, length = probs.shape[0], probs.ndim
    states_SxL = np.indices(probs.shape).reshape(length, -1).T
    onehot_SxLxV = states_SxL[:, :, None] == np.arange(vocab_size)
    with np.errstate(divide="ignore"):
      log_probs_S = np.log(probs.reshape(-1))
    object.__setattr__(self, "probs", jnp.asarray(probs, jnp.float32))
    object.__setattr__(self, "_log_probs_S", jnp.asarray(log_probs_S, jnp.float32))
    object.__setattr__(self, "_onehot_states_SxLV", jnp.asarray(
        onehot_SxLxV.reshape(probs.size, -1), jnp.float32))

  @property
  def vocab_size(self) -> int:
    return self.probs.shape[0]

  @property
  def length(self) -> int:
    return self.probs.ndim

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @classmethod
  def random(cls, key: jax.Array | int, vocab_size: int, length: int,
             concentration: float) -> JointTable:
    """A table drawn from a symmetric Dirichlet over all `V^L` states.

    Small `concentration` (e.g. 0.1) puts most mass on a few states, so positions
    are strongly dependent; large values approach the uniform table.

    Args:
      key: a PRNG key or an integer seed; the table is a function of it.
      vocab_size: V >= 1.
      length: L >= 1, with V^L <= 2^16.
      concentration: Dirichlet parameter, > 0.

    Raises:
      ValueError: bad sizes or concentration.
    """
    vocab_size = _check_positive_int("vocab_size", vocab_size)
    length = _check_positive_int("length", length)
    if vocab_size**length > _MAX_STATES:
      raise ValueError(f"vocab_size^length = {vocab_size**length} exceeds {_MAX_STATES}.")
    if not concentration > 0:
      raise ValueError(f"concentration must be > 0, got {concentration}.")
    alpha_S = jnp.full((vocab_size**length,), concentration, jnp.float32)
    probs_S = jax.random.dirichlet(_as_key(key), alpha_S)
    return cls(np.asarray(probs_S).reshape((vocab_size,) * length))

  @classmethod
  def from_phrases(cls, phrases: Sequence[Sequence[int]], probs: Sequence[float],
                   vocab_size: int, smoothing: float) -> JointTable:
    """A mixture of whole sequences plus uniform smoothing.

    P(x) = (1 - smoothing) * sum_k probs[k] [x == phrases[k]] + smoothing / V^L.
    With phrases [[0, 1], [2, 3]] ("New York", "Los Angeles") the two positions are
    perfectly dependent up to the smoothing, which gives every state positive
    probability when > 0.

    Args:
      phrases: K sequences of the same length L, tokens in [0, vocab_size).
      probs: K non-negative weights summing to 1.
      vocab_size: V.
      smoothing: mass in [0, 1] spread uniformly over all V^L states.

    Raises:
      ValueError: ragged or out-of-vocabulary phrases, bad weights or smoothing.
    """
    vocab_size = _check_positive_int("vocab_size", vocab_size)
    phrases_KxL = np.asarray(phrases)
    if phrases_KxL.ndim != 2 or phrases_KxL.shape[0] == 0 or phrases_KxL.shape[1] == 0:
      raise ValueError(f"phrases must be a non-empty list of equal-length token "
                       f"lists; got array of shape {phrases_KxL.shape}.")
    if not np.issubdtype(phrases_KxL.dtype, np.integer):
      raise ValueError(f"phrases must hold integer tokens, got dtype {phrases_KxL.dtype}.")
    if phrases_KxL.min() < 0 or phrases_KxL.max() >= vocab_size:
      raise ValueError(f"phrase tokens must lie in [0, {vocab_size}).")
    weights_K = _check_distribution("phrase probs", np.asarray(probs, np.float64), None)
    if weights_K.shape != (phrases_KxL.shape[0],):
      raise ValueError(f"need one prob per phrase: {phrases_KxL.shape[0]} phrases, "
                       f"probs of shape {weights_K.shape}.")
    if not 0.0 <= smoothing <= 1.0:
      raise ValueError(f"smoothing must lie in [0, 1], got {smoothing}.")
    length = phrases_KxL.shape[1]
    if vocab_size**length > _MAX_STATES:
      raise ValueError(f"vocab_size^length = {vocab_size**length} exceeds {_MAX_STATES}.")
    table = np.full((vocab_size,) * length, smoothing / vocab_size**length)
    for phrase_L, weight in zip(phrases_KxL, weights_K):
      table[tuple(phrase_L)] += (1.0 - smoothing) * weight
    return cls(table)

  def _row_logits(self, tokens_L: jax.Array) -> jax.Array:
    """float32[L, V] exact conditionals of one row (see `logits_fn`)."""
    revealed_L = tokens_L != self.mask_id
    onehot_LV = jax.nn.one_hot(tokens_L, self.vocab_size).reshape(-1)  # 0 if masked
    matches_S = jnp.dot(self._onehot_states_SxLV, onehot_LV, precision=_HIGHEST)
    consistent_S = matches_S == revealed_L.sum()
    log_weights_S = jnp.where(consistent_S, self._log_probs_S, -jnp.inf)
    max_log_weight = jnp.max(log_weights_S)
    possible = max_log_weight > -jnp.inf
    # Scaled by the largest consistent probability: the row's evidence may be tiny.
    weights_S = jnp.exp(log_weights_S - jnp.where(possible, max_log_weight, 0.0))
    posterior_LV = jnp.dot(weights_S, self._onehot_states_SxLV, precision=_HIGHEST)
    posterior_LxV, _ = _safe_normalize(posterior_LV.reshape(self.length, -1))
    return _conditional_logits(tokens_L, posterior_LxV, possible)

  @_jit_method
  def logits_fn(self, tokens_NxL: jax.Array) -> jax.Array:
    """float32[N, L, V] exact log-conditionals (see the module docstring).

    Every row is matched against all V^L states through a matmul of one-hot
    encodings; the conditionals are the probability-weighted sums of the
    consistent states. Memory per chunk is about rows_per_chunk * V^L floats.

    Raises:
      ValueError: tokens not an integer [N, L] array.
    """
    tokens_NxL = _check_tokens(tokens_NxL, self.length)
    rows_per_chunk = self.rows_per_chunk or max(1, _CHUNK_ELEMENTS // self.probs.size)
    return _map_rows(self._row_logits, tokens_NxL, rows_per_chunk)

  @_jit_method
  def log_prob(self, tokens_BxL: jax.Array) -> jax.Array:
    """float32[B] log P(x) of complete sequences (no masks; -inf if impossible).

    Raises:
      ValueError: tokens not an integer [B, L] array.
    """
    tokens_BxL = _check_tokens(tokens_BxL, self.length)
    strides_L = self.vocab_size ** jnp.arange(self.length - 1, -1, -1)
    return self._log_probs_S[tokens_BxL @ strides_L]

  def pair_marginal(self, i: int, j: int) -> jax.Array:
    """float32[V, V] P(x_i = a, x_j = b); ValueError unless i != j are positions."""
    _check_pair(i, j, self.length)
    others = tuple(axis for axis in range(self.length) if axis not in (i, j))
    pair_VxV = self.probs.sum(axis=others)  # axes in increasing position order
    return pair_VxV if i < j else pair_VxV.T

  @_jit_method
  def marginals(self) -> jax.Array:
    """float32[L, V] P(x_l = v) for every position l."""
    axes = range(self.length)
    return jnp.stack([self.probs.sum(axis=tuple(a for a in axes if a != l))
                      for l in axes])


@dataclasses.dataclass(frozen=True, eq=False)
class HiddenMarkovModel:
  """A stationary HMM: hidden chain h_0..h_{L-1}, token x_l emitted from h_l.

  P(x) = sum_h initial[h_0] prod_l transition[h_{l-1}, h_l] prod_l emission[h_l, x_l].

  Attributes:
    initial_H: float32[H] distribution of h_0.
    transition_HxH: float32[H, H] row-stochastic P(h_{l+1} = b | h_l = a).
    emission_HxV: float32[H, V] row-stochastic P(x_l = v | h_l = h).
    length: L >= 1.
    rows_per_chunk: rows processed together by `logits_fn` (None: automatic).

  Evidence is judged impossible when some step's predictive probability
  P(x_l | x_<l revealed) is 0 in float32 (exactly 0, or below ~1e-45).

  Raises (construction):
    ValueError: wrong shapes, negative or non-finite entries, rows not summing to
      1 within 1e-5, length < 1.
  """
  initial_H: jax.Array
  transition_HxH: jax.Array
  emission_HxV: jax.Array
  length: int
  rows_per_chunk: int | None = None

  def __post_init__(self):
    initial_H = np.asarray(self.initial_H)
    transition_HxH = np.asarray(self.transition_HxH)
    emission_HxV = np.asarray(self.emission_HxV)
    if initial_H.ndim != 1 or initial_H.shape[0] == 0:
      raise ValueError(f"initial distribution must be a non-empty vector, got shape "
                       f"{initial_H.shape}.")
    hidden = initial_H.shape[0]
    if transition_HxH.shape != (hidden, hidden):
      raise ValueError(f"transition must have shape ({hidden}, {hidden}) to match the "
                       f"initial distribution, got {transition_HxH.shape}.")
    if emission_HxV.ndim != 2 or emission_HxV.shape[0] != hidden:
      raise ValueError(f"emission must have shape ({hidden}, V), got "
                       f"{emission_HxV.shape}.")
    _check_positive_int("length", self.length)
    if self.rows_per_chunk is not None:
      _check_positive_int("rows_per_chunk", self.rows_per_chunk)
    arrays = {"initial_H": _check_distribution("initial distribution", initial_H, None),
              "transition_HxH": _check_distribution("transition", transition_HxH, 1),
              "emission_HxV": _check_distribution("emission", emission_HxV, 1)}
    for name, array in arrays.items():
      object.__setattr__(self, name, jnp.asarray(array, jnp.float32))
    object.__setattr__(self, "length", int(self.length))

  @property
  def vocab_size(self) -> int:
    return self.emission_HxV.shape[1]

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @classmethod
  def random(cls, key: jax.Array | int, hidden: int, vocab_size: int, length: int,
             concentration: float) -> HiddenMarkovModel:
    """An HMM whose initial, transition and emission rows are Dirichlet draws.

    Small `concentration` gives nearly deterministic transitions and emissions
    (long-range dependence); large values approach independent uniform tokens.

    Args:
      key: a PRNG key or an integer seed; the model is a function of it.
      hidden: H >= 1 hidden states.
      vocab_size: V >= 1.
      length: L >= 1.
      concentration: symmetric Dirichlet parameter, > 0.

    Raises:
      ValueError: bad sizes or concentration.
    """
    hidden = _check_positive_int("hidden", hidden)
    vocab_size = _check_positive_int("vocab_size", vocab_size)
    if not concentration > 0:
      raise ValueError(f"concentration must be > 0, got {concentration}.")
    key_initial, key_transition, key_emission = jax.random.split(_as_key(key), 3)

    def draw(key_rows, shape):
      """Rows of `shape` drawn from a symmetric Dirichlet."""
      alpha = jnp.full(shape[-1:], concentration, jnp.float32)
      return np.asarray(jax.random.dirichlet(key_rows, alpha, shape[:-1]))

    return cls(draw(key_initial, (hidden,)), draw(key_transition, (hidden, hidden)),
               draw(key_emission, (hidden, vocab_size)), length)

  def _evidence_LxH(self, tokens_L: jax.Array) -> jax.Array:
    """P(x_l = token | h_l = h) at revealed positions, 1 at masked ones."""
    revealed_L = tokens_L != self.mask_id
    column_LxH = self.emission_HxV.T[jnp.minimum(tokens_L, self.vocab_size - 1)]
    return jnp.where(revealed_L[:, None], column_LxH, 1.0)

  def _forward(self, evidence_LxH: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scaled forward pass.

    Returns:
      filtered_LxH: P(h_l | evidence at 0..l) (zero once the evidence is impossible).
      scale_L: P(evidence at l | evidence at 0..l-1); their product is P(evidence).
    """
    def step(prior_H, evidence_H):
      filtered_H, scale = _safe_normalize(prior_H * evidence_H)
      prior_H = jnp.dot(filtered_H, self.transition_HxH, precision=_HIGHEST)
      return prior_H, (filtered_H, scale[0])
    _, (filtered_LxH, scale_L) = jax.lax.scan(step, self.initial_H, evidence_LxH)
    return filtered_LxH, scale_L

  def _backward(self, evidence_LxH: jax.Array) -> jax.Array:
    """beta_LxH proportional to P(evidence at l+1..L-1 | h_l), each row normalized."""
    def step(message_H, evidence_H):
      # message_H = evidence_{l+1} * beta_{l+1}; 1 past the end (T @ 1 = 1).
      beta_H, _ = _safe_normalize(
          jnp.dot(self.transition_HxH, message_H, precision=_HIGHEST))
      return evidence_H * beta_H, beta_H
    ones_H = jnp.ones_like(self.initial_H)
    _, beta_LxH = jax.lax.scan(step, ones_H, evidence_LxH, reverse=True)
    return beta_LxH

  def _row_logits(self, tokens_L: jax.Array) -> jax.Array:
    """float32[L, V] exact conditionals of one row by forward-backward."""
    evidence_LxH = self._evidence_LxH(tokens_L)
    filtered_LxH, scale_L = self._forward(evidence_LxH)
    posterior_hidden_LxH, _ = _safe_normalize(filtered_LxH * self._backward(evidence_LxH))
    posterior_LxV, _ = _safe_normalize(
        jnp.dot(posterior_hidden_LxH, self.emission_HxV, precision=_HIGHEST))
    return _conditional_logits(tokens_L, posterior_LxV, jnp.all(scale_L > 0))

  @_jit_method
  def logits_fn(self, tokens_NxL: jax.Array) -> jax.Array:
    """float32[N, L, V] exact log-conditionals (see the module docstring).

    Scaled forward-backward over positions (`jax.lax.scan`), vmapped over rows;
    every step is normalized, so long sequences do not underflow.

    Raises:
      ValueError: tokens not an integer [N, L] array.
    """
    tokens_NxL = _check_tokens(tokens_NxL, self.length)
    width = self.length * max(self.initial_H.shape[0], self.vocab_size)
    rows_per_chunk = self.rows_per_chunk or max(1, _CHUNK_ELEMENTS // width)
    return _map_rows(self._row_logits, tokens_NxL, rows_per_chunk)

  @_jit_method
  def log_prob(self, tokens_BxL: jax.Array) -> jax.Array:
    """float32[B] log P(x) of complete sequences (no masks; -inf if impossible).

    Raises:
      ValueError: tokens not an integer [B, L] array.
    """
    tokens_BxL = _check_tokens(tokens_BxL, self.length)
    def row_log_prob(tokens_L):
      _, scale_L = self._forward(self._evidence_LxH(tokens_L))
      return jnp.sum(jnp.log(scale_L))
    return jax.vmap(row_log_prob)(tokens_BxL)

  @_jit_method
  def _hidden_marginals_LxH(self) -> jax.Array:
    """P(h_l = h) for every position l."""
    def step(hidden_H, _):
      return jnp.dot(hidden_H, self.transition_HxH, precision=_HIGHEST), hidden_H
    _, hidden_LxH = jax.lax.scan(step, self.initial_H, length=self.length)
    return hidden_LxH

  @_jit_method
  def marginals(self) -> jax.Array:
    """float32[L, V] P(x_l = v) for every position l."""
    return jnp.dot(self._hidden_marginals_LxH(), self.emission_HxV, precision=_HIGHEST)

  def pair_marginal(self, i: int, j: int) -> jax.Array:
    """float32[V, V] P(x_i = a, x_j = b); ValueError unless i != j are positions."""
    _check_pair(i, j, self.length)
    if i > j:
      return self.pair_marginal(j, i).T
    with jax.default_matmul_precision("highest"):
      hidden_H = self._hidden_marginals_LxH()[i]
      steps_HxH = jnp.linalg.matrix_power(self.transition_HxH, j - i)
      hidden_pair_HxH = hidden_H[:, None] * steps_HxH
      return self.emission_HxV.T @ hidden_pair_HxH @ self.emission_HxV


class MarkovChain(HiddenMarkovModel):
  """A stationary Markov chain over tokens: an HMM whose emission is the identity.

  P(x) = initial[x_0] prod_l transition[x_{l-1}, x_l]. Hidden states are tokens,
  so `initial_H` / `transition_HxH` hold the chain's initial distribution and
  transition matrix (H = V).
  """

  def __init__(self, initial_V: jax.Array, transition_VxV: jax.Array, length: int,
               rows_per_chunk: int | None = None):
    """Validates and stores the chain.

    Args:
      initial_V: [V] distribution of x_0.
      transition_VxV: [V, V] row-stochastic P(x_{l+1} = b | x_l = a).
      length: L >= 1.
      rows_per_chunk: rows processed together by `logits_fn` (None: automatic).

    Raises:
      ValueError: wrong shapes, negative or non-finite entries, rows not summing
        to 1 within 1e-5, length < 1.
    """
    initial_V = np.asarray(initial_V)
    if initial_V.ndim != 1:
      raise ValueError(f"initial distribution must be a vector, got shape "
                       f"{initial_V.shape}.")
    super().__init__(initial_V, transition_VxV, np.eye(initial_V.shape[0]), length,
                     rows_per_chunk)

  @classmethod
  def sticky(cls, vocab_size: int, length: int, stay_prob: float) -> MarkovChain:
    """A chain that repeats the previous token with probability `stay_prob`.

    Otherwise it moves uniformly to one of the other V - 1 tokens; x_0 is uniform.
    stay_prob = 1 makes every non-constant sequence impossible.

    Raises:
      ValueError: vocab_size < 2 or stay_prob outside [0, 1].
    """
    if _check_positive_int("vocab_size", vocab_size) < 2:
      raise ValueError("a sticky chain needs vocab_size >= 2.")
    if not 0.0 <= stay_prob <= 1.0:
      raise ValueError(f"stay_prob must lie in [0, 1], got {stay_prob}.")
    move_prob = (1.0 - stay_prob) / (vocab_size - 1)
    transition_VxV = np.full((vocab_size, vocab_size), move_prob)
    np.fill_diagonal(transition_VxV, stay_prob)
    return cls(np.full(vocab_size, 1.0 / vocab_size), transition_VxV, length)


@dataclasses.dataclass(frozen=True, eq=False)
class BlockCausal:
  """An oracle seen block-causally, with the block-local interface of `cache="exact"`.

  The denoiser's output for attention block `b` (positions `[b K, (b+1) K)`) is
  the oracle's output with every position of the later blocks masked, so it
  does not depend on them, like a block-causal transformer's. Its conditionals
  are the oracle's exact ones whenever the later blocks are masked anyway, as
  they are in semi-autoregressive decoding of an answer that ends the sequence
  with generation blocks inside attention blocks: then every sampler sees exact
  conditionals, and an exact sampler reproduces the oracle's joint.

  The "cache" of a state is the state itself, so `block_logits` runs the oracle
  on the assembled copies: it tests the sampler's cached path, not a speed-up.

  Attributes:
    oracle: any oracle (`logits_fn`, `mask_id`, `length`, `vocab_size`).
    block_length: `K >= 1`, the attention block length in positions.

  Raises (construction):
    ValueError: `block_length` not an integer >= 1.
  """
  oracle: JointTable | HiddenMarkovModel
  block_length: int

  def __post_init__(self):
    object.__setattr__(self, "block_length",
                       _check_positive_int("block_length", self.block_length))

  @property
  def exact_cache(self) -> bool:
    return True

  @property
  def mask_id(self) -> int:
    return self.oracle.mask_id

  @property
  def length(self) -> int:
    return self.oracle.length

  @property
  def vocab_size(self) -> int:
    return self.oracle.vocab_size

  @_jit_method
  def __call__(self, tokens_NxL: jax.Array) -> jax.Array:
    """float32[N, L, V]: block `b` from the oracle with the blocks after `b` masked.

    One oracle call per block. Raises ValueError: tokens not an integer [N, L] array.
    """
    tokens_NxL = _check_tokens(tokens_NxL, self.length)
    position_L = jnp.arange(self.length)
    blocks = []
    for start in range(0, self.length, self.block_length):
      end = start + self.block_length
      visible_NxL = jnp.where(position_L < end, tokens_NxL, self.mask_id)
      blocks.append(self.oracle.logits_fn(visible_NxL)[:, start:end])
    return jnp.concatenate(blocks, axis=1)

  def encode(self, tokens_NxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(float32[N, L, V] logits as `__call__`, the cache: int32[N, L], the states)."""
    tokens_NxL = _check_tokens(tokens_NxL, self.length)
    return self(tokens_NxL), tokens_NxL

  @_jit_method
  def copy_block_logits(self, cache_NxL: jax.Array, tokens_NxCxS: jax.Array,
                        start_NxC: jax.Array) -> jax.Array:
    """float32[N, C, S, V]: `block_logits` with a span start per copy (each copy its
    own row of the state, so the same pieces are seen)."""
    batch, copies, span = tokens_NxCxS.shape
    return self.block_logits(jnp.repeat(cache_NxL, copies, axis=0),
                             tokens_NxCxS.reshape(batch * copies, 1, span),
                             start_NxC.reshape(-1)).reshape(batch, copies, span, -1)

  @_jit_method
  def block_logits(self, cache_NxL: jax.Array, tokens_NxCxS: jax.Array,
                   start_N: jax.Array) -> jax.Array:
    """float32[N, C, S, V]: the span `[start, start + S)` of `C` copies of each state.

    Copy `c` of row `n` is `cache_NxL[n]` with the span set to `tokens_NxCxS[n, c]`;
    each piece of `block_length` positions of the span sees the copy with every
    position after the piece masked. Equal to `__call__` on that copy, at the
    span, when `start` and `S` are multiples of `block_length`.
    `start + S <= L` is required and not checked.
    """
    batch, copies, span = tokens_NxCxS.shape
    position_L = jnp.arange(self.length)
    copies_NxCxL = jax.vmap(lambda row_L, window_CxS, start: jax.lax.dynamic_update_slice(
        jnp.broadcast_to(row_L, (copies, self.length)), window_CxS, (0, start)))(
            cache_NxL, tokens_NxCxS, start_N)
    pieces = []
    for offset in range(0, span, self.block_length):
      size = min(self.block_length, span - offset)
      end_Nx1x1 = (start_N + offset + size)[:, None, None]
      visible_NxCxL = jnp.where(position_L < end_Nx1x1, copies_NxCxL, self.mask_id)
      logits_NxCxLxV = self.oracle.logits_fn(
          visible_NxCxL.reshape(batch * copies, self.length)).reshape(
              batch, copies, self.length, -1)
      pieces.append(jax.vmap(lambda logits_CxLxV, start: jax.lax.dynamic_slice_in_dim(
          logits_CxLxV, start, size, axis=1))(logits_NxCxLxV, start_N + offset))
    return jnp.concatenate(pieces, axis=2)

  def extend(self, cache_NxL: jax.Array, tokens_NxCxS: jax.Array,
             start_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(`block_logits`, the cache with the span set to copy 0's tokens): the cache
    of the states with the span replaced by copy 0's (see `fef_jax.samplers.cache`)."""
    states_NxL = jax.vmap(lambda row_L, span_S, start: jax.lax.dynamic_update_slice_in_dim(
        row_L, span_S, start, axis=0))(cache_NxL, tokens_NxCxS[:, 0].astype(cache_NxL.dtype),
                                       start_N)
    return self.block_logits(cache_NxL, tokens_NxCxS, start_N), states_NxL

  def extend_shared(self, cache_NxL: jax.Array, shared_NxP: jax.Array,
                    tokens_NxCxT: jax.Array, shared_start_N: jax.Array,
                    start_N: jax.Array, tail_NxR: jax.Array | None = None,
                    tail_start_N: jax.Array | None = None,
                    tail_copy: int = 0) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """`extend` of copies that also hold `shared_NxP` at `[shared_start, shared_start + P)`
    (see `fef_jax.models.Transformer.extend_shared`): the states get both. The
    optional tail's logits (float32[N, R, V]; None without one) are
    `block_logits` of copy `tail_copy` with the tail written in."""
    shared_states_NxL = jax.vmap(lambda row_L, piece_P, start: jax.lax.dynamic_update_slice_in_dim(
        row_L, piece_P, start, axis=0))(cache_NxL, shared_NxP.astype(cache_NxL.dtype),
                                        shared_start_N)
    logits_NxCxTxV, states_NxL = self.extend(shared_states_NxL, tokens_NxCxT, start_N)
    if tail_NxR is None:
      return logits_NxCxTxV, None, states_NxL
    copy_states_NxL = jax.vmap(lambda row_L, piece_T, start: jax.lax.dynamic_update_slice_in_dim(
        row_L, piece_T, start, axis=0))(shared_states_NxL,
                                        tokens_NxCxT[:, tail_copy].astype(cache_NxL.dtype),
                                        start_N)
    tail_logits_NxRxV = self.block_logits(copy_states_NxL, tail_NxR[:, None, :],
                                          tail_start_N)[:, 0]
    return logits_NxCxTxV, tail_logits_NxRxV, states_NxL
