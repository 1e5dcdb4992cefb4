"""Float32 round-off bounds for the tests that compare float computations.

CI runs on x86-64 CPUs of different vector widths, with and without FMA, and XLA
orders float32 sums and fuses operations differently on each, so a tolerance has to
bound the round-off of the computation rather than repeat what one CPU printed. The
bounds below are Higham's (Accuracy and Stability of Numerical Algorithms, ch. 3-4):
with u the unit round-off, a sum or dot product of n terms, in any order, errs by at
most gamma(n - 1) * sum |terms|; a chain of k rounded operations on positive values
(products, sums, quotients: no cancellation) errs by at most gamma(k) relative.
"""
import math

import numpy as np

U = 2.0 ** -24  # float32 unit round-off: half an ulp of 1
U_BF16 = 2.0 ** -9

# XLA's CPU exp, log, expm1, log1p, tanh, sin, cos, pow are polynomial approximations,
# not correctly rounded. Over 10^6 arguments each, their largest relative error was
# 5.4 u (expm1; tanh 4.7 u, log1p 3.4 u, log 2 u, exp 1.4 u, pow 1 u; sin and cos 0.54 u
# absolute up to |x| = 1100) on an AVX-512 CPU with FMA, and numpy's float32 exp and
# log (its own SIMD code) 3.3 u and 4.6 u. Each one is counted as this many roundings,
# about 3x what was measured, for other CPUs' code paths (no FMA, other vector widths).
TRANSCENDENTAL = 16


def gamma(n: float, u: float = U) -> float:
  """Higham's gamma_n = n u / (1 - n u): the relative error of n roundings."""
  if n * u >= 1:
    raise ValueError(f"gamma({n}) is unbounded for u = {u}")
  return n * u / (1 - n * u)


def log_softmax_chain(vocab: int) -> int:
  """Roundings of one float32 log-softmax entry, in units of u, per unit of scale.

  `x - max` (u |x - max|), exp of each entry (TRANSCENDENTAL u relative, and the
  first step's u |x_j - max| relative, which is <= u / e absolute after exp) and
  their sum over `vocab` entries (gamma(vocab - 1) relative, positive terms), the log
  (TRANSCENDENTAL u relative) and the final subtraction (u): with |x - max| and
  log(sum) both <= |log p|, one entry errs by at most
  (2 vocab + TRANSCENDENTAL) u + (TRANSCENDENTAL + 2) u |log p|,
  i.e. gamma(this) * (1 + |log p|).
  """
  return 2 * vocab + TRANSCENDENTAL + 2


def transformer_chain(*, length: int, d_model: int, attention_dim: int, mlp_dim: int,
                      num_layers: int, rope_theta: float | None = None) -> int:
  """The longest chain of float32 roundings from the embeddings to one logit.

  Per block: the norm's sum of squares (d_model), the query/key/value projections
  (d_model, and a bias), the query-key products (<= attention_dim), the softmax over
  the keys (exp and a sum of `length`), the weighted sum of values (length), the
  output projection (attention_dim), the second norm (d_model), the MLP's input
  projections and activation (d_model + TRANSCENDENTAL), its output projection
  (mlp_dim) and the two residual additions; then the final norm and the output
  projection (2 d_model).
  RoPE rotates by angles up to `length` radians, computed as position * theta^(-e):
  pow (TRANSCENDENTAL u) and the rounded exponent (log(theta) u) err relative to the
  angle, i.e. up to `length` times that in absolute terms, plus sin/cos and the 2x2
  rotation.

  Used as a first-order model, as in test_sharding.py: each stage adds at most gamma
  of its own length relative to the scale of the values it produces, so the logits
  of one float32 pass are within gamma(chain) * max(1, max |logits|) of exact.
  """
  per_block = (d_model                          # norm: sum of squares
               + d_model + 1                    # query, key, value projections, bias
               + attention_dim                  # query-key products
               + length + TRANSCENDENTAL        # softmax: exp, sum over the keys
               + length                         # weighted sum of the values
               + attention_dim                  # output projection
               + d_model                        # second norm
               + d_model + TRANSCENDENTAL       # MLP input projections, activation
               + mlp_dim                        # MLP output projection
               + 2)                             # residual additions
  chain = num_layers * per_block + 2 * d_model
  if rope_theta is not None:
    angle = (TRANSCENDENTAL + math.ceil(math.log(rope_theta)) + 1) * length
    chain += num_layers * (angle + TRANSCENDENTAL + 2)
  return chain


def network_chain(config, length: int) -> int:
  """`transformer_chain` of an imported LLaDA/Dream network's `NetworkConfig`."""
  return transformer_chain(length=length, d_model=config.d_model,
                           attention_dim=config.num_heads * config.head_dim,
                           mlp_dim=config.mlp_dim, num_layers=config.num_layers,
                           rope_theta=config.rope_theta)


def two_pass_bound(chain: int, logits) -> float:
  """How far two float32 evaluations of one network (different programs, shapes or
  implementations) may disagree: each within gamma(chain) * max(1, max |logits|) of
  exact (see `transformer_chain`)."""
  return 2 * gamma(chain) * max(1.0, float(np.max(np.abs(logits))))


def two_pass_log_prob_bound(log_probs, depth: int):
  """Two float32 evaluations of the same log-conditionals (jitted, batched or chunked
  differently): each conditional is a ratio of sums of non-negative terms, so within
  gamma(depth) relative of exact, `depth` the roundings along its longest chain; its
  log is then within gamma(depth) + TRANSCENDENTAL u |log p|. Twice that, elementwise
  (infinite log-probabilities must match exactly, see `assert_within`)."""
  log_probs = np.asarray(log_probs, np.float64)
  finite = np.where(np.isfinite(log_probs), np.abs(log_probs), 0.0)
  return 2 * gamma(depth + TRANSCENDENTAL) * (1.0 + finite)


def joint_table_depth(table) -> int:
  """Roundings of a `JointTable` conditional: exp(log p - max) (the subtraction's u
  times |log p - max| <= the table's log-probability range, and exp's own), the sum
  over at most V^(L-1) consistent states, the normalization over V and the division."""
  probs = np.asarray(table.probs, np.float64)
  log_range = math.ceil(np.log(probs.max() / probs[probs > 0].min()))
  return TRANSCENDENTAL + log_range + probs.size // table.vocab_size + table.vocab_size + 1


def fef_chain(config, length: int) -> int:
  """`transformer_chain` of this package's `TransformerConfig` (heads split d_model);
  time conditioning adds a path of its own: sin/cos of the time and a 2-layer MLP."""
  chain = transformer_chain(length=length, d_model=config.d_model,
                            attention_dim=config.d_model, mlp_dim=config.mlp_dim,
                            num_layers=config.num_layers, rope_theta=config.rope_theta)
  if getattr(config, "time_conditioning", False):
    chain += 2 * config.d_model + 2 * TRANSCENDENTAL
  return chain


def spec_head_chain(config, num_items: int) -> int:
  """`transformer_chain` of a speculative head (`SpecHeadConfig`) from given backbone
  hidden states to one item's logits: the `reveal` projection of the concatenated
  value embedding and hidden state (2 d_model) and its residual addition (1), then
  `head_layers` blocks of the backbone's width over `num_items` items (RoPE angles
  up to the positions, < max_length), and the final norm and output projection."""
  return (2 * config.d_model + 1
          + transformer_chain(length=max(num_items, config.max_length),
                              d_model=config.d_model, attention_dim=config.d_model,
                              mlp_dim=config.mlp_dim, num_layers=config.head_layers,
                              rope_theta=config.rope_theta))


def bf16_roundings(num_layers: int) -> int:
  """bfloat16 roundings along the longest chain of a network computed in bfloat16
  (float32 accumulation, so its sums add only float32 round-off, negligible beside
  these): per block 14 stored activations (norm, query, key, value, scores, softmax,
  attention output, output projection, residual, second norm, MLP input projections,
  activation and product, output projection, residual) and 6 weight matrices cast to
  bfloat16; then the final norm, the output projection and its weights. With the first-
  order model of `transformer_chain`, such a pass is within
  gamma(this, U_BF16) * max(1, max |logits|) of exact."""
  return num_layers * (14 + 6) + 3


def assert_within(actual, desired, bound, err_msg: str = "") -> None:
  """|actual - desired| <= bound elementwise (bound broadcast), in float64; where
  either side is not finite, both must be the same infinity."""
  actual, desired = np.broadcast_arrays(np.asarray(actual, np.float64),
                                        np.asarray(desired, np.float64))
  with np.errstate(invalid="ignore"):
    error = np.where(actual == desired, 0.0, np.abs(actual - desired))
  bound = np.broadcast_to(np.asarray(bound, np.float64), error.shape)
  finite = np.isfinite(actual) & np.isfinite(desired)
  bad = ~(error <= bound) | (~finite & (actual != desired))
  if bad.any():
    with np.errstate(invalid="ignore"):
      excess = np.where(bad, np.nan_to_num(error - bound, nan=np.inf), -np.inf)
    worst = np.unravel_index(np.argmax(excess), error.shape)
    raise AssertionError(
        f"{err_msg}: {int(bad.sum())} of {error.size} beyond the round-off bound; at "
        f"{tuple(int(i) for i in worst)}: |{float(actual[worst])!r} - "
        f"{float(desired[worst])!r}| = {error[worst]:.3e} > {bound[worst]:.3e}")
