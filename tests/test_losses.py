"""Tests for fef_jax.losses: cross-entropy, continuous and discrete ELBOs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax import losses
from fef_jax import schedules
from tests import roundoff

EPS = 1e-3
# Monte Carlo tests share one shape and call the losses eagerly, so that their
# ops compile once for all schedules. The mask id lies outside the vocabulary.
ROWS, LENGTH, VOCAB = 1024, 1024, 4
# Likewise one shape (B, L, V) for the exact, non-statistical checks.
SMALL = (8, 16, 9)


def _np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _assert_cross_entropy_close(ce, expected, vocab):
  """float32 masked cross-entropies against a float64 reference (same logits): each is
  -log_softmax, so it errs by at most gamma(log_softmax_chain(V)) * (1 + |log p|)."""
  bound = roundoff.gamma(roundoff.log_softmax_chain(vocab)) * (1.0 + np.abs(expected))
  roundoff.assert_within(ce, expected, bound, "masked cross-entropy")


def _random_problem(seed, mask_id):
  """Random SMALL logits, clean tokens in [0, V) minus mask_id, and a mask."""
  batch, length, vocab = SMALL
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=3.0, size=(batch, length, vocab)).astype(np.float32)
  x0 = rng.integers(0, min(vocab, mask_id), (batch, length), dtype=np.int32)
  xt = np.where(rng.random((batch, length)) < 0.5, mask_id, x0)
  return logits, x0, xt


def _forward_sample(seed, schedule, t_R, maskable=None):
  """Clean tokens (ROWS, LENGTH) and a copy masked with prob. 1 - alpha(t)."""
  rng = np.random.default_rng(seed)
  x0 = rng.integers(0, VOCAB, (ROWS, LENGTH), dtype=np.int32)
  p_R = np.asarray(schedule.mask_prob(jnp.asarray(t_R, jnp.float32)))
  masked = rng.random((ROWS, LENGTH)) < p_R[:, None]
  if maskable is not None:
    masked &= maskable
  return x0, np.where(masked, VOCAB, x0)


# Relative round-off of one all-zero-logits estimate: a float32 sum of up to LENGTH equal
# cross-entropies log V (gamma(LENGTH - 1) relative: non-negative terms, in whatever order
# the CPU sums them), log V itself (TRANSCENDENTAL u), the division by the token count,
# the weight and the factor 1 - eps (a few u, 5 counted).
_ESTIMATE_RTOL = roundoff.gamma(LENGTH + roundoff.TRANSCENDENTAL + 5)


def _uniform_predictor_estimates(elbo_fn, schedule, t_R, seed, **kwargs):
  """ELBO estimates (ROWS,) of the all-zero-logits predictor on random masks."""
  x0, xt = _forward_sample(seed, schedule, t_R, kwargs.get("maskable_BxL"))
  logits = jnp.zeros((ROWS, LENGTH, VOCAB))
  return np.asarray(elbo_fn(logits, x0, xt, jnp.asarray(t_R, jnp.float32),
                            schedule, VOCAB, **kwargs), np.float64)


def test_masked_cross_entropy_matches_numpy():
  mask_id = SMALL[2]
  logits, x0, xt = _random_problem(0, mask_id)
  ce = losses.masked_cross_entropy(logits, x0, xt, mask_id)
  assert ce.dtype == jnp.float32
  logp = np.take_along_axis(_np_log_softmax(logits), x0[..., None], -1)[..., 0]
  expected = np.where(xt == mask_id, -logp, 0.0)
  assert 0 < (xt == mask_id).sum() < xt.size
  _assert_cross_entropy_close(ce, expected, SMALL[2])


def test_masked_cross_entropy_computes_in_float32():
  mask_id = SMALL[2]
  logits, x0, xt = _random_problem(1, mask_id)
  ce = losses.masked_cross_entropy(jnp.asarray(logits, jnp.bfloat16), x0, xt,
                                   mask_id)
  assert ce.dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
  logp = np.take_along_axis(_np_log_softmax(rounded), x0[..., None], -1)[..., 0]
  _assert_cross_entropy_close(ce, np.where(xt == mask_id, -logp, 0.0), SMALL[2])


def test_mask_logit_inside_vocabulary_is_excluded():
  mask_id = SMALL[2] - 1  # the mask is the last vocabulary entry
  logits, x0, xt = _random_problem(2, mask_id)
  logits[..., mask_id] = 30.0  # would dominate the softmax if included
  ce = losses.masked_cross_entropy(logits, x0, xt, mask_id)
  logp = np.take_along_axis(_np_log_softmax(logits[..., :mask_id]),
                            x0[..., None], -1)[..., 0]
  _assert_cross_entropy_close(ce, np.where(xt == mask_id, -logp, 0.0), mask_id)
  # No gradient flows to the excluded logit, and none is NaN.
  grad = jax.jit(jax.grad(
      lambda l: losses.masked_cross_entropy(l, x0, xt, mask_id).sum()))(
          jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[..., mask_id], 0.0)


@pytest.mark.parametrize("name", ["linear", "cosine", "geometric"])
def test_perfect_predictor_has_zero_loss(name):
  schedule = schedules.get_schedule(name)
  num_steps = 16
  t_R = np.tile(np.arange(1, num_steps + 1) / num_steps, ROWS // num_steps)
  x0, xt = _forward_sample(0, schedule, t_R)
  logits = 1e4 * jax.nn.one_hot(x0, VOCAB)
  assert (xt == VOCAB).sum() > 0
  t_R = jnp.asarray(t_R, jnp.float32)
  np.testing.assert_allclose(
      losses.continuous_elbo(logits, x0, xt, t_R, schedule, VOCAB), 0.0,
      atol=1e-6)
  np.testing.assert_allclose(
      losses.discrete_elbo(logits, x0, xt, t_R, schedule, VOCAB, num_steps),
      0.0, atol=1e-6)


def test_uniform_predictor_linear_expectation_at_every_t():
  # With all-zero logits over V tokens every masked position costs log V, so
  # the estimate is c * K / (t L) with c = (1 - eps) log V and
  # K ~ Binomial(L, t): its mean is c at every t, its variance
  # c^2 (1 - t) / (t L). Over R rows at one t the standard error is
  # c sqrt((1 - t) / (t L R)); allow 5 of them plus float32 rounding (the only
  # allowance at t = 1, where the standard error is 0).
  t_values = np.asarray([EPS, 0.01, 0.03, 0.1, 0.3, 0.5, 0.9, 1.0])
  rows = ROWS // len(t_values)
  est_TxR = _uniform_predictor_estimates(
      losses.continuous_elbo, schedules.linear(),
      np.repeat(t_values, rows), seed=0).reshape(-1, rows)
  c = (1.0 - EPS) * math.log(VOCAB)
  se_T = c * np.sqrt((1.0 - t_values) / (t_values * LENGTH * rows))
  np.testing.assert_array_less(np.abs(est_TxR.mean(axis=1) - c),
                               5.0 * se_T + _ESTIMATE_RTOL * c)
  # At t = 1 every token is masked: the estimate is exact in every row, up to round-off.
  np.testing.assert_allclose(est_TxR[-1], c, rtol=_ESTIMATE_RTOL)


def test_uniform_predictor_normalizes_by_maskable_tokens():
  # Rows have prompts of random lengths (some none, one everything): the loss
  # per maskable token is still c = (1 - eps) log V. At t = 1 every maskable
  # token is masked, so it is exact; a row with nothing maskable reports 0.
  prompt_R = np.random.default_rng(5).integers(0, LENGTH, ROWS)
  prompt_R[:2] = [0, LENGTH]
  maskable = np.arange(LENGTH)[None, :] >= prompt_R[:, None]
  est_R = _uniform_predictor_estimates(
      losses.continuous_elbo, schedules.linear(), np.ones(ROWS), seed=1,
      maskable_BxL=maskable)
  c = (1.0 - EPS) * math.log(VOCAB)
  np.testing.assert_allclose(est_R, np.where(prompt_R < LENGTH, c, 0.0),
                             rtol=_ESTIMATE_RTOL, atol=0)


@pytest.mark.parametrize("name,kwargs", [
    ("cosine", {}), ("polynomial", {"exponent": 2.0}),
    ("polynomial", {"exponent": 0.5}), ("geometric", {}), ("log_linear", {})])
def test_uniform_predictor_expectation_over_t_by_quadrature(name, kwargs):
  # E_{t ~ U[eps, 1]}[estimate] = int_eps^1 -alpha'(t) dt log V
  #                             = (alpha(eps) - alpha(1)) log V.
  # The integral over t is taken by Gauss-Legendre quadrature in s = log t
  # (smooth for every schedule); at each node the expectation over masks is a
  # Monte Carlo mean over R rows of length L. Node k's mean has variance
  # (c w_k)^2 p_k (1 - p_k) / (L R), c = (1 - eps) log V, p_k the masking
  # probability, so the quadrature sum has variance
  # sum_k (q_k t_k / (1 - eps))^2 (c w_k)^2 p_k (1 - p_k) / (L R).
  # Allow 5 standard errors plus the quadrature rule's own error on the exact
  # integrand -alpha'(t) log V and float32 rounding.
  schedule = schedules.get_schedule(name, **kwargs)
  num_nodes = 64
  rows = ROWS // num_nodes
  nodes, q = np.polynomial.legendre.leggauss(num_nodes)
  log_eps = math.log(EPS)
  t_k = np.exp(0.5 * log_eps * (1.0 - nodes))  # s in [log eps, 0]
  q_k = 0.5 * (-log_eps) * q * t_k  # dt = t ds
  est_KxR = _uniform_predictor_estimates(
      losses.continuous_elbo, schedule, np.repeat(t_k, rows),
      seed=2).reshape(-1, rows)
  integral = np.sum(q_k * est_KxR.mean(axis=1)) / (1.0 - EPS)

  log_v = math.log(VOCAB)
  with jax.enable_x64(True):
    t64 = jnp.asarray(t_k)
    w_k = np.asarray(schedule.weight(t64))
    p_k = np.asarray(schedule.mask_prob(t64))
    exact = float(schedule.alpha(EPS) - schedule.alpha(1.0))
    quad_err = abs(np.sum(q_k * -np.asarray(schedule.dalpha(t64))) - exact)
  c = (1.0 - EPS) * log_v
  se = np.sqrt(np.sum((q_k / (1.0 - EPS) * c * w_k)**2 * p_k * (1.0 - p_k))
               / (LENGTH * rows))
  assert quad_err < 1e-6
  expected = exact * log_v
  assert abs(integral - expected) < (5.0 * se + quad_err * log_v
                                     + 1e-5 * expected)


@pytest.mark.parametrize("name", ["cosine", "geometric"])
def test_uniform_predictor_discrete_elbo_telescopes(name):
  # Over the grid t_k = k/T, E[estimate | t_k] = T (alpha(s_k) - alpha(t_k))
  # log V, and the uniform average over k telescopes to
  # (alpha(0) - alpha(1)) log V. Node k's mean over R rows has variance
  # (w_k log V)^2 p_k (1 - p_k) / (L R) with w_k the discrete weight; the
  # average over the T nodes divides the summed variances by T^2.
  schedule = schedules.get_schedule(name)
  num_steps = 16
  rows = ROWS // num_steps
  t_k = np.arange(1, num_steps + 1) / num_steps
  est_KxR = _uniform_predictor_estimates(
      losses.discrete_elbo, schedule, np.repeat(t_k, rows), seed=3,
      num_steps=num_steps).reshape(-1, rows)
  alpha_0, alpha_1 = np.asarray(schedule.alpha(jnp.asarray([0.0, 1.0])),
                                np.float64)
  log_v = math.log(VOCAB)
  expected = (alpha_0 - alpha_1) * log_v
  t_k = jnp.asarray(t_k, jnp.float32)
  w_k = np.asarray(losses.discrete_weight(t_k, schedule, num_steps),
                   np.float64)
  p_k = np.asarray(schedule.mask_prob(t_k), np.float64)
  se = np.sqrt(np.sum((w_k * log_v)**2 * p_k * (1.0 - p_k))
               / (LENGTH * rows)) / num_steps
  assert abs(est_KxR.mean() - expected) < 5.0 * se + 1e-5 * expected


def test_discrete_elbo_is_continuous_over_one_minus_eps_for_linear():
  mask_id, num_steps = SMALL[2], SMALL[0]
  logits, x0, xt = _random_problem(3, mask_id)
  t_B = jnp.arange(1, num_steps + 1) / num_steps
  # Both multiply the same eagerly computed per-token NLL (identical bits) by a weight.
  # With t = k/8 exact, the discrete weight 8 (alpha(t - 1/8) - alpha(t)) / t is exact
  # up to the division; times the NLL: 2 roundings. The continuous side rounds 1/t,
  # the product with (1 - eps), the one with the NLL and the division by (1 - eps) here
  # (the same float32 constant, so it cancels): 4. Correctly rounded IEEE operations,
  # no reductions: gamma(6) on every CPU.
  np.testing.assert_allclose(
      losses.discrete_elbo(logits, x0, xt, t_B, schedules.linear(), mask_id,
                           num_steps),
      losses.continuous_elbo(logits, x0, xt, t_B, schedules.linear(), mask_id)
      / (1.0 - EPS), rtol=roundoff.gamma(6))


def test_elbos_jit_match_no_jit():
  mask_id, num_steps = SMALL[2], SMALL[0]
  logits, x0, xt = _random_problem(4, mask_id)
  maskable = np.arange(SMALL[1])[None, :] >= np.arange(num_steps)[:, None]
  t_B = jnp.arange(1, num_steps + 1) / num_steps
  args = (logits, x0, xt, t_B, schedules.cosine(), mask_id)
  continuous = jax.jit(losses.continuous_elbo,
                       static_argnames=("schedule", "mask_id", "eps"))
  discrete = jax.jit(losses.discrete_elbo,
                     static_argnames=("schedule", "mask_id", "num_steps"))
  # Same computation; XLA fusion may reorder float32 roundings, so each side is within
  # its round-off bound of the exact value and the two within twice it. An estimate is
  # weight * NLL. The NLL, a mean of non-negative cross-entropies (each within
  # gamma(log_softmax_chain(V)) * (1 + ce), their sum within gamma(L) relative, then
  # the division), errs by at most gamma(that + L + 1) * (1 + NLL). The times k/8 are
  # exact. The continuous weight (1 - eps) pi/2 sin(pi/2 (1 - t)) / sin(pi/2 t) rounds
  # two sines and their arguments (TRANSCENDENTAL + 2 each), pi/2, 1 - eps, two products
  # and the quotient: gamma(2 TRANSCENDENTAL + 10) relative. The discrete one subtracts
  # two alphas 2 sin(pi/4 (1 - t))^2, each within gamma(2 TRANSCENDENTAL + 6) of its
  # size, so their difference errs by that times (alpha(s) + alpha(t)) / (alpha(s) -
  # alpha(t)) relative; then times T, over the mask probability (a sine) and divided.
  schedule, t64 = schedules.cosine(), np.asarray(t_B, np.float64)
  with jax.enable_x64(True):
    s64 = np.maximum(t64 - 1.0 / num_steps, 0.0)
    alpha_s, alpha_t = (np.asarray(schedule.alpha(jnp.asarray(x))) for x in (s64, t64))
    weights = {"continuous": (1.0 - EPS) * np.asarray(schedule.weight(jnp.asarray(t64))),
               "discrete": num_steps * (alpha_s - alpha_t) / (1.0 - alpha_t)}
  weight_rtol = {"continuous": roundoff.gamma(2 * roundoff.TRANSCENDENTAL + 10),
                 "discrete": roundoff.gamma(2 * roundoff.TRANSCENDENTAL + 6)
                             * (alpha_s + alpha_t) / (alpha_s - alpha_t)
                             + roundoff.gamma(roundoff.TRANSCENDENTAL + 5)}
  nll_rtol = roundoff.gamma(roundoff.log_softmax_chain(mask_id) + SMALL[1] + 1)
  for name, jitted, eager in (
      ("continuous", continuous(*args, maskable_BxL=maskable),
       losses.continuous_elbo(*args, maskable_BxL=maskable)),
      ("discrete", discrete(*args, num_steps, maskable_BxL=maskable),
       losses.discrete_elbo(*args, num_steps, maskable_BxL=maskable))):
    eager = np.asarray(eager, np.float64)
    bound = 2 * (nll_rtol * (weights[name] + np.abs(eager))
                 + weight_rtol[name] * np.abs(eager))
    roundoff.assert_within(jitted, eager, bound, err_msg=name)


@pytest.mark.parametrize("name,kwargs", [
    ("cosine", {}), ("polynomial", {"exponent": 2.0}),
    ("polynomial", {"exponent": 0.5}), ("geometric", {})])
def test_discrete_weight_converges_to_continuous(name, kwargs):
  # T (alpha(t - h) - alpha(t)) = -alpha'(t) + (h / 2) alpha''(t) + O(h^2)
  # with h = 1/T, so the relative error of the discrete weight is
  # (h / 2) |alpha''(t) / alpha'(t)| + O(h^2): first order, with a constant we
  # compute from alpha'' by autodiff. In float64, so that
  # alpha(t - h) - alpha(t) keeps its digits at T = 10^4.
  schedule = schedules.get_schedule(name, **kwargs)
  all_steps = (10, 100, 1000, 10000)
  with jax.enable_x64(True):
    t = jnp.asarray([0.1, 0.2, 0.5, 0.8, 0.9])  # on every grid above
    continuous = schedule.weight(t)
    errors = [float(jnp.max(jnp.abs(
        losses.discrete_weight(t, schedule, num_steps) / continuous - 1.0)))
              for num_steps in all_steps]
    curvature = jax.vmap(jax.grad(schedule.dalpha))(t) / schedule.dalpha(t)
    leading = float(jnp.max(jnp.abs(curvature))) / (2 * all_steps[-1])
  assert all(later < 0.2 * earlier
             for earlier, later in zip(errors, errors[1:])), errors
  # At T = 10^4 the O(h^2) remainder is below 1% of the leading term.
  assert errors[-1] == pytest.approx(leading, rel=1e-2), errors
  assert errors[-1] < 5e-3, errors


@pytest.mark.parametrize("name", ["linear", "log_linear"])
def test_discrete_weight_equals_continuous_for_linear(name):
  schedule = schedules.get_schedule(name)
  for num_steps in (1, 3, 10, 1000):
    k = np.ceil(np.linspace(1, num_steps, 8))  # grid indices, fixed shape
    with jax.enable_x64(True):
      t = jnp.asarray(k / num_steps)
      np.testing.assert_allclose(
          losses.discrete_weight(t, schedule, num_steps), schedule.weight(t),
          rtol=1e-10)
    # In float32 the difference alpha(t - 1/T) - alpha(t) = (1 - eps)/T is formed
    # from values of size <= 1: 1/T, t - 1/T, and for each alpha (1 - eps) times the
    # time and 1 minus that, each rounding at most u in absolute terms, 5 u + 2 u / T in
    # all, i.e. (5 T + 2) u / (1 - eps) relative to the difference; then times T, the
    # mask probability, the division and weight(t)'s own 3 roundings. Eager,
    # element-wise, correctly rounded IEEE operations: the same on every CPU.
    t = jnp.asarray(k, jnp.float32) / num_steps
    np.testing.assert_allclose(losses.discrete_weight(t, schedule, num_steps),
                               schedule.weight(t),
                               rtol=roundoff.gamma(5 * num_steps + 10))


@pytest.mark.parametrize("num_steps,batch", [(16, 16), (5, 40)])
def test_antithetic_grid_times_cover_grid_evenly(num_steps, batch):
  for seed in range(5):
    t_B = np.asarray(losses.sample_grid_times(jax.random.PRNGKey(seed), batch,
                                              num_steps))
    k_B = t_B * num_steps
    np.testing.assert_allclose(k_B, np.round(k_B), atol=1e-4)
    counts = np.bincount(np.round(k_B).astype(int), minlength=num_steps + 1)
    assert counts[0] == 0
    np.testing.assert_array_equal(counts[1:], batch // num_steps)


def test_iid_grid_times_are_uniform_on_grid():
  # Each grid count is Binomial(n, 1/T); allow 5 standard errors.
  num_steps, n = 10, 20000
  t_B = np.asarray(losses.sample_grid_times(jax.random.PRNGKey(0), n,
                                            num_steps, antithetic=False))
  k_B = np.round(t_B * num_steps).astype(int)
  np.testing.assert_allclose(t_B * num_steps, k_B, atol=1e-4)
  counts = np.bincount(k_B, minlength=num_steps + 1)
  assert counts[0] == 0
  p = 1.0 / num_steps
  np.testing.assert_array_less(np.abs(counts[1:] - n * p),
                               5.0 * math.sqrt(n * p * (1.0 - p)))


def test_nats_to_bits_and_perplexity():
  nats = jnp.asarray([0.0, 1.0, math.log(256.0)])
  np.testing.assert_allclose(losses.nats_to_bits(nats) * math.log(2.0), nats,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.nats_to_bits(nats)[2], 8.0, rtol=1e-6)
  np.testing.assert_allclose(losses.perplexity_bound(nats), [1.0, math.e, 256],
                             rtol=1e-5)


def _loss_args(**overrides):
  vocab = 5
  args = {"logits_BxLxV": jnp.zeros((2, 3, vocab)),
          "x0_BxL": jnp.zeros((2, 3), jnp.int32),
          "xt_BxL": jnp.full((2, 3), vocab, jnp.int32),
          "t_B": jnp.full((2,), 0.5), "schedule": schedules.linear(),
          "mask_id": vocab}
  args.update(overrides)
  return args


@pytest.mark.parametrize("overrides,match", [
    ({"logits_BxLxV": jnp.zeros((2, 3))}, r"3-D.*\(2, 3\)"),
    ({"x0_BxL": jnp.zeros((2, 4), jnp.int32)},
     r"x0_BxL has shape \(2, 4\) but logits_BxLxV has shape \(2, 3, 5\)"),
    ({"xt_BxL": jnp.zeros((3, 3), jnp.int32)},
     r"xt_BxL has shape \(3, 3\) but logits_BxLxV has shape \(2, 3, 5\)"),
    ({"t_B": jnp.zeros((3,))}, r"t_B has shape \(3,\), expected \(2,\)"),
    ({"maskable_BxL": jnp.ones((2, 2), bool)}, r"maskable_BxL.*\(2, 2\)"),
    ({"maskable_BxL": jnp.ones((2, 3), jnp.float32)}, "bool"),
    ({"mask_id": -1}, "mask_id"),
    ({"mask_id": 5.0}, "mask_id"),
])
@pytest.mark.parametrize("elbo", ["continuous", "discrete"])
def test_elbos_reject_bad_arguments(elbo, overrides, match):
  with pytest.raises(ValueError, match=match):
    if elbo == "continuous":
      losses.continuous_elbo(**_loss_args(**overrides))
    else:
      losses.discrete_elbo(**_loss_args(**overrides), num_steps=4)


@pytest.mark.parametrize("eps", [0.0, 1.0, -1e-3])
def test_continuous_elbo_rejects_bad_eps(eps):
  with pytest.raises(ValueError, match="eps"):
    losses.continuous_elbo(**_loss_args(), eps=eps)


@pytest.mark.parametrize("num_steps", [0, -2, 2.5])
def test_discrete_functions_reject_bad_num_steps(num_steps):
  with pytest.raises(ValueError, match="num_steps"):
    losses.discrete_elbo(**_loss_args(), num_steps=num_steps)
  with pytest.raises(ValueError, match="num_steps"):
    losses.sample_grid_times(jax.random.PRNGKey(0), 4, num_steps)
