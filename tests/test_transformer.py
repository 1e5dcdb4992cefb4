"""Tests for fef_jax.models.transformer: the bidirectional transformer denoiser."""
import dataclasses
import functools
import gc
import math
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import api
from fef_jax import generate
from fef_jax import models
from fef_jax.models import spec_head
from tests import roundoff

VOCAB = 11
MASK_ID = VOCAB  # appended mask row
LENGTH = 16
BATCH = 3
CONFIG = models.TransformerConfig(vocab_size=VOCAB, mask_id=MASK_ID, max_length=LENGTH,
                                  d_model=32, num_layers=2, num_heads=4, mlp_dim=64)
TIMED = dataclasses.replace(CONFIG, time_conditioning=True)


def _params(config):
  return models.init_params(config, jax.random.key(0))


def _tokens(seed, batch=BATCH, mask_fraction=0.3):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (batch, LENGTH))
  tokens[rng.random((batch, LENGTH)) < mask_fraction] = MASK_ID
  return jnp.asarray(tokens, jnp.int32)


def _apply(config, params, tokens, valid=None, t=None):
  return models.Transformer(config).apply({"params": params}, tokens, valid, t)


_apply_jit = jax.jit(_apply, static_argnums=0)


@pytest.fixture(scope="module")
def params():
  return _params(CONFIG)


@pytest.fixture(scope="module")
def timed_params():
  return _params(TIMED)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(dtype, params):
  config = dataclasses.replace(CONFIG, dtype=dtype)
  own = jax.eval_shape(functools.partial(models.init_params, config), jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(own))
  tokens = _tokens(0)
  logits = _apply_jit(config, params, tokens)
  assert logits.shape == (BATCH, LENGTH, VOCAB) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  reference = _apply_jit(CONFIG, params, tokens)
  if dtype == jnp.bfloat16:  # really computed in bf16: close, but not equal
    assert not np.array_equal(logits, reference)
    bound = (roundoff.gamma(roundoff.bf16_roundings(config.num_layers), roundoff.U_BF16)
             * max(1.0, float(np.abs(reference).max())))
    np.testing.assert_allclose(logits, reference, rtol=0, atol=bound)


@pytest.mark.parametrize("tie,time,mask_id", [(True, False, VOCAB), (False, False, VOCAB),
                                              (True, True, VOCAB), (False, True, 0)])
def test_num_params_counts_the_initialized_tree(tie, time, mask_id):
  config = dataclasses.replace(CONFIG, tie_embeddings=tie, time_conditioning=time,
                               mask_id=mask_id)
  tree = jax.eval_shape(functools.partial(models.init_params, config), jax.random.key(0))
  assert models.num_params(config) == _count(tree)
  assert tree["embed"]["embedding"].shape[0] == VOCAB + (mask_id == VOCAB)
  assert ("unembed" in tree) == (not tie)
  assert ("time" in tree) == time


def test_flops_per_token_matches_xla_forward_count():
  # Large enough that matmuls dominate, long enough that attention is ~10% of it.
  config = models.TransformerConfig(vocab_size=256, mask_id=256, max_length=128,
                                    d_model=128, num_layers=2, num_heads=4, mlp_dim=512)
  batch, length = 2, 128
  params = jax.eval_shape(functools.partial(models.init_params, config),
                          jax.random.key(0))
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  compiled = jax.jit(_apply, static_argnums=0).lower(config, params, tokens).compile()
  cost = compiled.cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
  estimate = models.flops_per_token(config, length) / 3 * batch * length
  assert abs(xla_flops - estimate) / estimate < 0.03, (xla_flops, estimate)
  with pytest.raises(ValueError, match="length"):
    models.flops_per_token(config, 0)


def test_attention_is_bidirectional(params):
  tokens = _tokens(1)
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % VOCAB)
  diff = np.abs(_apply_jit(CONFIG, params, tokens) - _apply_jit(CONFIG, params, changed))
  assert np.all(diff[:, :-1].max(axis=-1) > 1e-6)  # every earlier position sees it


def test_padding_keys_are_never_attended(params):
  k = 5
  tokens = _tokens(2)
  valid = jnp.ones((BATCH, LENGTH), bool).at[:, -k:].set(False).at[2].set(False)
  other = tokens.at[:, -k:].set(jnp.asarray(np.random.default_rng(3).integers(
      0, VOCAB + 1, (BATCH, k)), jnp.int32))
  assert not np.array_equal(tokens, other)
  logits = _apply_jit(CONFIG, params, tokens, valid)
  logits_other = _apply_jit(CONFIG, params, other, valid)
  assert np.all(np.isfinite(logits)) and np.all(np.isfinite(logits_other))
  np.testing.assert_allclose(logits[:2, :-k], logits_other[:2, :-k], rtol=0, atol=1e-6)
  # The mask matters: without it the valid positions do see the changed tokens.
  unmasked = np.abs(_apply_jit(CONFIG, params, tokens) - _apply_jit(CONFIG, params, other))
  assert unmasked[:2, :-k].max() > 1e-4


def _rope_reference(x_K, position, theta):
  """Rotates feature pair (i, i + K/2) by position * theta^(-2i/K) with 2x2 matrices."""
  half = x_K.shape[0] // 2
  out = np.empty_like(x_K, dtype=np.float64)
  for i in range(half):
    angle = position * theta ** (-2.0 * i / x_K.shape[0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    out[i], out[i + half] = rotation @ np.array([x_K[i], x_K[i + half]], np.float64)
  return out


def test_rope_matches_reference_and_is_relative():
  theta, head_dim = 10000.0, 8
  rng = np.random.default_rng(4)
  x_1xLx2xK = rng.normal(size=(1, 7, 2, head_dim)).astype(np.float32)
  positions = np.array([0, 1, 2, 5, 17, 100, 1023])
  rotated = np.asarray(models.rope(jnp.asarray(x_1xLx2xK), jnp.asarray(positions), theta))
  # float32 angles position * theta^(-2i/K): the rounded exponent (u relative, times
  # |log theta^(-2i/K)| <= log theta) and pow (TRANSCENDENTAL u) err relative to
  # theta^(-2i/K), the product once more, so the angle by that chain times |angle|,
  # which moves the pair by at most as much times its norm; then cos/sin
  # (TRANSCENDENTAL u absolute) and the 2x2 rotation (gamma(2) relative).
  angle_rtol = roundoff.gamma(roundoff.TRANSCENDENTAL + math.ceil(math.log(theta)) + 2)
  half = head_dim // 2
  for l, position in enumerate(positions):
    angle_K = np.tile(position * theta ** (-2.0 * np.arange(half) / head_dim), 2)
    for h in range(2):
      x_K = x_1xLx2xK[0, l, h].astype(np.float64)
      pair_K = np.tile(np.abs(x_K[:half]) + np.abs(x_K[half:]), 2)
      bound = pair_K * (angle_rtol * angle_K + roundoff.gamma(roundoff.TRANSCENDENTAL + 2))
      roundoff.assert_within(rotated[0, l, h],
                             _rope_reference(x_1xLx2xK[0, l, h], position, theta), bound,
                             f"position {position}")

  q, k = rng.normal(size=(2, 1, 1, 1, head_dim)).astype(np.float32)

  def score(m, n):
    rq = models.rope(jnp.asarray(q), jnp.asarray([m]), theta)
    rk = models.rope(jnp.asarray(k), jnp.asarray([n]), theta)
    return float(jnp.sum(rq * rk))

  # The exact score q^T R(n - m) k is the same for every shift; a float32 one errs by
  # at most (to first order) sum_K pair_q pair_k * (the two rotations' errors as above,
  # angle_rtol * (angle_K(m) + angle_K(n)) + 2 gamma(TRANSCENDENTAL + 2)), plus the
  # dot product's gamma(head_dim) * sum_K pair_q pair_k (|rotated x_K| <= pair_K).
  pairs_K = np.prod([np.tile(np.abs(v.ravel()[:half]) + np.abs(v.ravel()[half:]), 2)
                     for v in (q, k)], axis=0, dtype=np.float64)
  frequency_K = np.tile(theta ** (-2.0 * np.arange(half) / head_dim), 2)

  def score_bound(m, n):
    return float(np.sum(pairs_K * (angle_rtol * (m + n) * frequency_K
                                   + 2 * roundoff.gamma(roundoff.TRANSCENDENTAL + 2)
                                   + roundoff.gamma(head_dim))))

  for m, n in [(3, 0), (0, 5), (7, 7)]:
    for s in (1, 13, 200):
      roundoff.assert_within(score(m + s, n + s), score(m, n),
                             score_bound(m + s, n + s) + score_bound(m, n), f"shift {s}")
  assert abs(score(3, 0) - score(0, 3)) > 1e-3  # not merely constant


def test_the_rotary_table_is_computed_once_per_pass(params):
  # Inside a sampler's loop the positions are traced, so every rope() of every layer
  # would be its own sin and cos kernels; one table serves all layers' queries and keys.
  jaxpr = jax.make_jaxpr(lambda tokens, positions: models.Transformer(CONFIG).apply(
      {"params": params}, tokens, None, positions, None,
      method=models.Transformer._forward))(_tokens(1), jnp.arange(LENGTH) + 1)
  primitives = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
  assert CONFIG.num_layers > 1 and primitives.count("sin") == 1, primitives.count("sin")
  assert primitives.count("cos") == 1


def test_rows_are_independent(params):
  tokens = _tokens(5)
  batched = _apply_jit(CONFIG, params, tokens)
  two_pass = roundoff.two_pass_bound(roundoff.fef_chain(CONFIG, LENGTH), batched)
  for b in range(BATCH):
    # Another batch size is another program (XLA may block and order the sums
    # differently): two passes' round-off.
    np.testing.assert_allclose(batched[b], _apply_jit(CONFIG, params, tokens[b:b + 1])[0],
                               rtol=0, atol=two_pass)
  changed = _apply_jit(CONFIG, params, tokens.at[1:].set(MASK_ID))
  np.testing.assert_allclose(changed[0], batched[0], rtol=0, atol=1e-6)


def test_jit_matches_eager(params):
  tokens = _tokens(6)
  valid = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [10], [3]])
  # Eager op-by-op dispatch against one fused program: round-off of two passes.
  jitted = _apply_jit(CONFIG, params, tokens, valid)
  bound = roundoff.two_pass_bound(roundoff.fef_chain(CONFIG, LENGTH), jitted)
  np.testing.assert_allclose(_apply(CONFIG, params, tokens, valid), jitted, rtol=0, atol=bound)


def _remat_policies(closed_jaxpr) -> list:
  """The `policy` of every rematerialized (checkpointed) call in a jaxpr, nested ones too."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if "policy" in eqn.params:
        found.append(eqn.params["policy"])
      for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)
        if hasattr(inner, "eqns"):
          walk(inner)

  walk(closed_jaxpr.jaxpr)
  return found


@pytest.mark.parametrize("remat", [True, "full", "dots_saveable",
                                   "dots_with_no_batch_dims_saveable"])
def test_every_remat_policy_gives_the_same_loss_and_gradients(remat, params):
  # One block (the first of `params`) keeps the gradient compilations cheap.
  config = dataclasses.replace(CONFIG, num_layers=1)
  params = {name: p for name, p in params.items() if name != "block_1"}
  tokens = _tokens(7)

  def loss(params, config):
    return jnp.mean(jax.nn.log_softmax(_apply(config, params, tokens))[..., 0])

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  value, grads = value_and_grad(params, config)
  remat_config = dataclasses.replace(config, remat=remat)
  value_r, grads_r = value_and_grad(params, remat_config)
  # The policy reaches jax.checkpoint (one call per block); no remat, no checkpoint.
  policy = models.transformer.REMAT_POLICIES[remat_config.remat_policy]
  found = _remat_policies(jax.make_jaxpr(functools.partial(loss, config=remat_config))(params))
  assert len(found) == config.num_layers and all(p is policy for p in found), found
  assert not _remat_policies(jax.make_jaxpr(functools.partial(loss, config=config))(params))
  # Remat recomputes the same operations, so the two programs differ only in how XLA
  # fuses and orders them: round-off. The loss is a mean of log-probabilities: each
  # logit within gamma(chain) * max(1, max |logits|) of exact per pass, which moves a
  # log-softmax entry by at most twice that, plus the log-softmax's own round-off and
  # the mean's sum over the positions.
  logits = _apply_jit(config, params, tokens)
  chain = roundoff.fef_chain(config, LENGTH)
  log_p = np.asarray(jax.nn.log_softmax(logits)[..., 0])
  value_bound = 2 * (2 * roundoff.gamma(chain) * max(1.0, float(np.abs(logits).max()))
                     + roundoff.gamma(roundoff.log_softmax_chain(VOCAB) + log_p.size)
                     * (1.0 + float(np.abs(log_p).max())))
  roundoff.assert_within(value_r, value, value_bound, "loss")
  assert jax.tree.structure(grads_r) == jax.tree.structure(grads)
  assert _count(grads) == models.num_params(config)
  # A gradient entry runs the forward chain, the log-softmax's derivative, the
  # backward chain (as long again) and the sum over the batch's positions; as in
  # test_sharding.py, each pass's round-off is bounded relative to the gradient's
  # global norm.
  grad_norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))
  grad_chain = 2 * chain + roundoff.log_softmax_chain(VOCAB) + tokens.size
  grad_bound = 2 * roundoff.gamma(grad_chain) * grad_norm
  for path, g_r in jax.tree_util.tree_leaves_with_path(grads_r):
    g = functools.reduce(lambda tree, key: tree[key.key], path, grads)
    roundoff.assert_within(g_r, g, grad_bound, jax.tree_util.keystr(path))
  assert any(np.abs(g).max() > 100 * grad_bound for g in jax.tree.leaves(grads))


def test_remat_names_map_to_policies():
  assert [dataclasses.replace(CONFIG, remat=r).remat_policy
          for r in (False, True, "none", "full", "dots_saveable")] == [
              "none", "full", "none", "full", "dots_saveable"]
  # A bool prints as before policy names existed (checkpoint fingerprints hold the repr).
  assert "remat=False" in repr(CONFIG)
  assert "remat=True" in repr(dataclasses.replace(CONFIG, remat=True))


def test_time_conditioning(params, timed_params):
  tokens = _tokens(8)
  early = _apply_jit(TIMED, timed_params, tokens, None, jnp.full((BATCH,), 0.1))
  late = _apply_jit(TIMED, timed_params, tokens, None, jnp.full((BATCH,), 0.9))
  assert np.abs(early - late).max() > 1e-3
  with pytest.raises(ValueError, match="t_B"):
    _apply(TIMED, timed_params, tokens)
  # Disabled: no time parameters, and t_B is ignored (the two calls compile separately,
  # so they agree up to round-off).
  assert "time" not in params
  without = _apply_jit(CONFIG, params, tokens)
  np.testing.assert_allclose(
      _apply_jit(CONFIG, params, tokens, None, jnp.ones(BATCH)), without, rtol=0,
      atol=roundoff.two_pass_bound(roundoff.fef_chain(CONFIG, LENGTH), without))


def test_bad_inputs_raise(params):
  with pytest.raises(ValueError, match="max_length"):
    _apply(CONFIG, params, jnp.zeros((1, LENGTH + 1), jnp.int32))
  with pytest.raises(ValueError, match="valid_BxL"):
    _apply(CONFIG, params, _tokens(0), jnp.ones((BATCH, LENGTH), jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    _apply(CONFIG, params, jnp.zeros((1, LENGTH)))


@pytest.mark.parametrize("method,options", [("fef", {"window": 2}),
                                            ("confidence", {"steps": 5})])
def test_denoiser_samples_end_to_end(method, options, params):
  prompt_length = 6
  tokens = _tokens(9, batch=2, mask_fraction=0.0).at[:, prompt_length:].set(MASK_ID)
  logits_fn = models.Denoiser(models.Transformer(CONFIG), params)
  result = fj.sample(logits_fn, tokens, jax.random.key(0), method, mask_id=MASK_ID,
                     **options)
  out = np.asarray(result.tokens)
  assert out.shape == tokens.shape
  assert np.all((out >= 0) & (out < VOCAB))
  np.testing.assert_array_equal(out[:, :prompt_length], tokens[:, :prompt_length])
  assert np.all(np.asarray(result.stats.tokens) == LENGTH - prompt_length)


def test_denoisers_of_one_model_share_a_compiled_sampler_with_their_own_parameters(params):
  # `fj.sample` passes a Denoiser's parameters to its program as arguments, so other
  # parameters of the same model (another checkpoint, a later training step) compile
  # nothing and are the ones sampled, not stale constants of the first.
  model = models.Transformer(CONFIG)
  other = models.init_params(CONFIG, jax.random.key(1))
  tokens = _tokens(11, batch=2, mask_fraction=0.0).at[:, 5:].set(MASK_ID)
  sample = functools.partial(fj.sample, tokens_BxL=tokens, key=jax.random.key(3),
                             method="fef", mask_id=MASK_ID, window=3)
  first = sample(models.Denoiser(model, params))
  compiled = api._run._cache_size()  # pylint: disable=protected-access
  second = sample(models.Denoiser(model, other))
  assert api._run._cache_size() == compiled  # pylint: disable=protected-access
  assert not np.array_equal(first.tokens, second.tokens)
  for p, got in ((params, first), (other, second)):
    # A plain function is static: its program holds these parameters as constants.
    denoiser = models.Denoiser(model, p)
    want = sample(lambda t, d=denoiser: d(t))
    np.testing.assert_array_equal(got.tokens, want.tokens)


def test_a_denoiser_of_traced_parameters_samples_inside_jit_as_outside(params):
  # Its leaves are arguments, so a user's jitted function of the parameters (an
  # evaluation step) can build the denoiser from them and sample.
  model = models.Transformer(CONFIG)
  tokens = _tokens(13, batch=2, mask_fraction=0.0).at[:, 6:].set(MASK_ID)
  sample = functools.partial(fj.sample, tokens_BxL=tokens, method="fef", mask_id=MASK_ID,
                             window=3)
  inside = jax.jit(lambda p, key: sample(models.Denoiser(model, p), key=key).tokens)
  outside = sample(models.Denoiser(model, params), key=jax.random.key(4))
  np.testing.assert_array_equal(inside(params, jax.random.key(4)), outside.tokens)


def test_sampling_keeps_no_parameters_alive(params):
  # A training run samples with a new Denoiser of new parameters every few hundred
  # steps: none of fj.sample's caches (validation, the compiled program) may hold them.
  model = models.Transformer(CONFIG)
  tokens = _tokens(12, batch=2, mask_fraction=0.0).at[:, 6:].set(MASK_ID)
  fresh = jax.tree.map(lambda p: p + 1.0, params)
  leaf = weakref.ref(jax.tree.leaves(fresh)[0])
  denoiser = models.Denoiser(model, fresh)
  gone = weakref.ref(denoiser)
  fj.sample(denoiser, tokens, jax.random.key(0), "fef", mask_id=MASK_ID, window=3)
  del denoiser, fresh
  gc.collect()
  assert gone() is None and leaf() is None


@pytest.mark.parametrize("head", [False, True])
def test_a_denoiser_splits_into_its_model_and_its_parameters(head, params):
  if head:
    config = spec_head.SpecHeadConfig(**dataclasses.asdict(CONFIG), head_layers=1)
    denoiser = spec_head.SpecHeadDenoiser(spec_head.SpecHeadTransformer(config),
                                          spec_head.init_params(config, jax.random.key(0)))
  else:
    denoiser = models.Denoiser(models.Transformer(CONFIG), params,
                               valid_fn=generate.left_padding_valid_fn(0))
  definition, leaves = api.split_denoiser(denoiser)
  assert len(leaves) == len(jax.tree.leaves(denoiser.params)) > 0
  twin = type(denoiser)(denoiser.model, denoiser.params, generate.left_padding_valid_fn(0)
                        if denoiser.valid_fn is not None else None)
  assert api.split_denoiser(twin)[0] == definition  # equal models: one compiled program
  joined = api.join_denoiser(definition, leaves)
  assert type(joined) is type(denoiser) and joined.model == denoiser.model
  assert joined.valid_fn == denoiser.valid_fn
  assert all(a is b for a, b in zip(jax.tree.leaves(joined.params), leaves))
  # Anything else is static, whole.
  plain = lambda t: denoiser(t)  # pylint: disable=unnecessary-lambda
  assert api.split_denoiser(plain) == (plain, ())
  assert api.join_denoiser(plain, ()) is plain


def test_denoiser_with_padding_and_time(timed_params):
  pad_id = 0
  logits_fn = models.Denoiser(models.Transformer(TIMED), timed_params,
                              valid_fn=lambda x: x != pad_id)
  tokens = _tokens(10).at[:, -4:].set(pad_id)
  valid = tokens != pad_id
  t = jnp.sum((tokens == MASK_ID) & valid, axis=1) / jnp.sum(valid, axis=1)
  # The denoiser's program against eager op-by-op dispatch: round-off of two passes.
  want = _apply(TIMED, timed_params, tokens, valid, t)
  np.testing.assert_allclose(logits_fn(tokens), want, rtol=0,
                             atol=roundoff.two_pass_bound(roundoff.fef_chain(TIMED, LENGTH), want))


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 0, "vocab_size"),
    ("mask_id", VOCAB + 1, "mask_id"),
    ("mask_id", -1, "mask_id"),
    ("max_length", True, "max_length"),
    ("d_model", 30, "d_model"),
    ("d_model", 36, "head dim"),
    ("num_layers", 0, "num_layers"),
    ("num_heads", -4, "num_heads"),
    ("mlp_dim", 2.5, "mlp_dim"),
    ("rope_theta", 0.0, "rope_theta"),
    ("dtype", jnp.int32, "dtype"),
    ("remat", "everything", "remat"),
    ("remat", 1, "remat"),
    ("attention_impl", "flash", "attention_impl"),
    ("attention_impl", "cudnn", "bfloat16 or float16"),  # float32 compute
])
def test_bad_config_raises(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(CONFIG, **{field: value})

