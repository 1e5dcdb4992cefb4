"""Training throughput options: the attention kernel, the chunked loss, the optimizer's
precision and buffer donation. Each option must compute what the default computes, up to
round-off bounded from the computation (tests/roundoff.py), and the defaults must not move.

cuDNN cannot run here (CPU): its choice is tested by resolving it for described devices,
its mask plumbing by running the broadcast mask through XLA, and its refusal on CPU.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fef_jax import losses
from fef_jax import models
from fef_jax import schedules
from fef_jax.models import spec_head
from fef_jax.models import transformer
from fef_jax.train import optim
from fef_jax.train import step as train_lib
from tests import roundoff

VOCAB = 11
MASK_ID = VOCAB
LENGTH = 16
BATCH = 4
CONFIG = models.TransformerConfig(vocab_size=VOCAB, mask_id=MASK_ID, max_length=LENGTH,
                                  d_model=32, num_layers=2, num_heads=4, mlp_dim=64)
HEAD_CONFIG = spec_head.SpecHeadConfig(**{f.name: getattr(CONFIG, f.name)
                                          for f in dataclasses.fields(CONFIG)}, head_layers=1)


def _tokens(seed, mask_fraction=0.4):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (BATCH, LENGTH))
  tokens[rng.random((BATCH, LENGTH)) < mask_fraction] = MASK_ID
  return jnp.asarray(tokens, jnp.int32)


def _valid():
  """Right padding of different lengths, and one row with a hole (valid need not be a
  prefix): every row keeps valid keys."""
  valid = np.arange(LENGTH)[None, :] < np.array([[LENGTH], [11], [5], [LENGTH]])
  valid[3, 6:9] = False
  return jnp.asarray(valid)


def _apply(config, params, *args, method=None):
  return models.Transformer(config).apply({"params": params}, *args, method=method)


_apply_jit = jax.jit(_apply, static_argnums=0, static_argnames="method")


@pytest.fixture(scope="module")
def params():
  return models.init_params(CONFIG, jax.random.key(0))


# --- Attention kernels ---------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_cpu_attention_kernels_match_the_einsum_span_attention(attention, impl, params):
  # Every kernel usable on CPU, against an independent implementation: the cached span
  # pass (`attend_span`, einsums) over a span that covers the whole sequence, where the
  # context is empty and the span mask is the full pass's (padding, block order).
  config = dataclasses.replace(CONFIG, attention=attention, attention_impl=impl,
                               block_length=4 if attention == "block_causal" else None)
  assert transformer.attention_implementation(config, LENGTH, True) == "xla"  # on CPU
  tokens, valid = _tokens(1), _valid()
  full = _apply_jit(config, params, tokens, valid)
  _, cache = _apply_jit(config, params, tokens, valid, method="encode")
  span = _apply_jit(config, params, cache, tokens[:, None, :],
                    jnp.zeros((BATCH,), jnp.int32), method="block_logits")[:, 0]
  valid = np.asarray(valid)
  roundoff.assert_within(np.asarray(span)[valid], np.asarray(full)[valid],
                         roundoff.two_pass_bound(roundoff.fef_chain(config, LENGTH), full),
                         f"{attention}/{impl}")
  # The mask matters here: without it the valid positions see the padding.
  unmasked = _apply_jit(config, params, tokens)
  assert np.abs(np.asarray(unmasked) - np.asarray(full))[valid].max() > 1e-3
  # "auto" resolves to XLA on CPU: the same program as before the choice existed.
  default = dataclasses.replace(config, attention_impl="auto")
  np.testing.assert_array_equal(full, _apply_jit(default, params, tokens, valid))


@pytest.mark.parametrize("mask_shape", [(BATCH, 1, 1, LENGTH), (1, 1, LENGTH, LENGTH),
                                        (BATCH, 1, LENGTH, LENGTH), (1, LENGTH, LENGTH)])
def test_the_cudnn_mask_is_the_same_mask_with_whole_query_and_key_axes(mask_shape):
  rng = np.random.default_rng(2)
  mask = rng.random(mask_shape) < 0.7
  mask[..., 0] = True  # every query sees a key
  q, k, v = (jnp.asarray(rng.normal(size=(BATCH, LENGTH, 2, 8)), jnp.float32)
             for _ in range(3))
  broadcast = transformer.cudnn_mask(jnp.asarray(mask), LENGTH)
  assert broadcast.shape[-2:] == (LENGTH, LENGTH)
  assert broadcast.shape[:2] == ((1,) * (4 - len(mask_shape)) + mask_shape)[:2]
  attend = functools.partial(jax.nn.dot_product_attention, q, k, v, implementation="xla")
  np.testing.assert_array_equal(attend(mask=broadcast), attend(mask=jnp.asarray(mask)))


def _resolve(impl, dtype, head_dim, capability, length=128, masked=True):
  config = models.TransformerConfig(vocab_size=VOCAB, mask_id=MASK_ID, max_length=256,
                                    d_model=2 * head_dim, num_layers=1, num_heads=2,
                                    mlp_dim=64, dtype=dtype, attention_impl=impl)
  return transformer.attention_implementation(config, length, masked,
                                              compute_capability=capability)


BF16 = jnp.bfloat16


@pytest.mark.parametrize("impl,dtype,head_dim,capability,length,masked,expected", [
    ("auto", BF16, 64, (9, 0), 128, True, "cudnn"),
    ("auto", jnp.float16, 128, (8, 0), 128, False, "cudnn"),
    ("auto", BF16, 192, (9, 0), 128, True, "cudnn"),
    ("auto", BF16, 64, (9, 0), 127, False, "cudnn"),   # unmasked: odd lengths are fine
    ("auto", jnp.float32, 64, (9, 0), 128, True, "xla"),
    ("auto", BF16, 64, None, 128, True, "xla"),          # not a CUDA GPU
    ("auto", BF16, 64, (7, 5), 128, True, "xla"),        # before Ampere
    ("auto", BF16, 12, (9, 0), 128, True, "xla"),        # head dim not a multiple of 8
    ("auto", BF16, 192, (8, 6), 128, True, "xla"),       # > 128 before Hopper
    ("auto", BF16, 64, (9, 0), 127, True, "xla"),        # masked, odd length
    ("xla", BF16, 64, (9, 0), 128, True, "xla"),
    ("cudnn", BF16, 64, (8, 0), 128, True, "cudnn"),
    ("cudnn", BF16, 64, None, 128, True, "not a CUDA GPU"),
    ("cudnn", BF16, 64, (7, 0), 128, True, "below 8.0"),
    ("cudnn", BF16, 192, (8, 0), 128, True, "exceeds 128"),
    ("cudnn", BF16, 64, (9, 0), 127, True, "xla"),       # documented: masked, odd length
    ("cudnn", BF16, 64, (9, 0), 1, True, "xla"),         # e.g. the initializing pass
])
def test_attention_kernel_choice(impl, dtype, head_dim, capability, length, masked, expected):
  if expected in ("xla", "cudnn"):
    assert _resolve(impl, dtype, head_dim, capability, length, masked) == expected
  else:
    with pytest.raises(ValueError, match=expected):
      _resolve(impl, dtype, head_dim, capability, length, masked)


def test_impossible_cudnn_choices_are_clear_errors(params):
  for dtype, head_dim, message in [(jnp.float32, 64, "float32 is not bfloat16"),
                                   (BF16, 12, "head dim 12")]:
    with pytest.raises(ValueError, match=message):
      _resolve("cudnn", dtype, head_dim, (9, 0))  # raised on construction
  if jax.default_backend() == "cpu":
    config = dataclasses.replace(CONFIG, dtype=BF16, attention_impl="cudnn")
    with pytest.raises(ValueError, match="'cpu' is not a CUDA GPU"):
      _apply(config, params, _tokens(0))


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
def test_the_cudnn_train_step_lowers_for_cuda(attention, monkeypatch):
  # No GPU here: lower the train step for CUDA with JAX's cuDNN attention checks told
  # what a Hopper GPU with cuDNN 9.10 would say. XLA then checks shapes, dtypes and the
  # masks' bias layout as far as lowering goes (not the kernels' numbers).
  fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
  for name, value in [("check_cudnn_version", lambda: 91000),
                      ("check_compute_capability", lambda capability: True),
                      ("is_cuda_compute_capability_equal", lambda capability: False)]:
    if not hasattr(fused, name):
      pytest.skip(f"this JAX has no {name} to stand in for a GPU")
    monkeypatch.setattr(fused, name, value)
  monkeypatch.setattr(transformer, "_gpu_compute_capability", lambda: (9, 0))
  config = dataclasses.replace(CONFIG, dtype=BF16, attention_impl="cudnn", attention=attention,
                               block_length=4 if attention == "block_causal" else None)
  model = models.Transformer(config)
  params = jax.eval_shape(functools.partial(models.init_params, config), jax.random.key(0))
  loss = functools.partial(train_lib.loss_fn, apply_fn=train_lib.make_apply_fn(model),
                           config=train_lib.LossConfig(mask_id=MASK_ID))
  grad = jax.jit(jax.grad(loss, has_aux=True))
  text = grad.trace(params, batch=_batch(0), key=jax.random.key(0)).lower(
      lowering_platforms=("cuda",)).as_text()
  # One fused forward and one fused backward per layer; the mask is an additive bias.
  assert text.count("custom_call @__cudnn$fmhaScaleBiasSoftmax(") == config.num_layers
  assert text.count("custom_call @__cudnn$fmhaScaleBiasSoftmaxBackward(") == config.num_layers
  # Unmasked (no padding given, bidirectional): no bias at all.
  if attention == "bidirectional":
    forward = jax.jit(functools.partial(_apply, config))
    text = forward.trace(params, _tokens(0)).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("custom_call @__cudnn$fmhaSoftmax(") == config.num_layers


def test_new_fields_at_their_defaults_leave_the_checkpoint_fingerprint_alone():
  # The reprs of configs made before attention_impl existed (checkpoint fingerprints).
  assert repr(CONFIG) == (
      "TransformerConfig(vocab_size=11, mask_id=11, max_length=16, d_model=32, num_layers=2, "
      "num_heads=4, mlp_dim=64, rope_theta=10000.0, time_conditioning=False, "
      "tie_embeddings=True, remat=False, dtype=<class 'jax.numpy.float32'>)")
  assert repr(HEAD_CONFIG) == (
      "SpecHeadConfig(vocab_size=11, mask_id=11, max_length=16, d_model=32, num_layers=2, "
      "num_heads=4, mlp_dim=64, rope_theta=10000.0, time_conditioning=False, "
      "tie_embeddings=True, remat=False, dtype=<class 'jax.numpy.float32'>, "
      "attention='bidirectional', block_length=None, head_layers=1)")
  for config in (CONFIG, HEAD_CONFIG):
    assert "attention_impl='xla'" in repr(dataclasses.replace(config, attention_impl="xla"))


# --- The chunked loss -----------------------------------------------------------------------


def _chunk_case(seed, mask_id, dtype, vocab=37, width=24):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(BATCH, LENGTH, width)), dtype)
  unembed = jnp.asarray(rng.normal(size=(vocab, width)) / np.sqrt(width), jnp.float32)
  x0 = rng.integers(0, vocab, (BATCH, LENGTH))
  x0[x0 == mask_id] = (mask_id + 1) % vocab  # a clean token is never the mask
  xt = np.where(rng.random((BATCH, LENGTH)) < 0.5, mask_id, x0)
  return hidden, unembed, jnp.asarray(x0, jnp.int32), jnp.asarray(xt, jnp.int32)


def _reference(hidden, unembed, x0, xt, mask_id):
  """float64 logits, softmax, log-probabilities of x0 and the loss's logit gradient."""
  h = np.asarray(hidden, np.float64)
  w = np.asarray(jnp.asarray(unembed, hidden.dtype), np.float64)  # the rounded table
  logits = h @ w.T
  if mask_id < w.shape[0]:
    logits[..., mask_id] = -np.inf
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  p = np.exp(log_p)
  scored = np.asarray(xt) == mask_id
  onehot = np.eye(w.shape[0])[np.asarray(x0)]
  grad_logits = np.where(scored[..., None], p - onehot, 0.0)
  return dict(h=h, w=w, log_p=log_p, p=p, scored=scored,
              ce=np.where(scored, -np.take_along_axis(log_p, np.asarray(x0)[..., None],
                                                      -1)[..., 0], 0.0),
              grad_logits=grad_logits)


def _one_pass_bounds(ref):
  """Round-off of one float32 evaluation of the cross-entropies and their gradients.

  A logit is a dot product over D: within gamma(D) * sum_d |h_d w_vd| of exact. A
  log-softmax entry moves by at most twice its inputs' largest error, plus its own
  round-off gamma(log_softmax_chain) * (1 + |log p|). Its derivative p - onehot inherits
  p's relative error: the same, plus exp's. The hidden states' gradient sums V terms
  g_v w_vd, the table's sums B * L terms g h: gamma(terms) * sum |terms|, plus the
  propagated error of g.
  """
  h, w, p, log_p = ref["h"], ref["w"], ref["p"], ref["log_p"]
  batch, length, width = h.shape
  vocab = w.shape[0]
  logit_error = roundoff.gamma(width) * (np.abs(h) @ np.abs(w).T).max(-1)  # [B, L]
  softmax_gamma = roundoff.gamma(roundoff.log_softmax_chain(vocab))
  ce = ref["scored"] * (2 * logit_error + softmax_gamma * (1.0 + ref["ce"]))
  finite_log_p = np.where(np.isfinite(log_p), np.abs(log_p), 0.0)
  p_error = ref["scored"][..., None] * p * (
      2 * logit_error[..., None] + softmax_gamma * (1.0 + finite_log_p)
      + roundoff.gamma(roundoff.TRANSCENDENTAL))
  g = np.abs(ref["grad_logits"])
  grad_h = roundoff.gamma(vocab) * (g @ np.abs(w)) + p_error @ np.abs(w)
  flat = lambda x: x.reshape(batch * length, -1)
  grad_w = (roundoff.gamma(batch * length) * (flat(g).T @ flat(np.abs(h)))
            + flat(p_error).T @ flat(np.abs(h)))
  return ce, grad_h, grad_w


@pytest.mark.parametrize("chunk", [1, 5, LENGTH, LENGTH + 3])
@pytest.mark.parametrize("mask_id,dtype", [(37, jnp.float32), (4, jnp.float32),
                                           (37, jnp.bfloat16)])
def test_chunked_cross_entropy_and_gradients_equal_the_whole_logits(chunk, mask_id, dtype):
  hidden, unembed, x0, xt = _chunk_case(chunk, mask_id, dtype)

  def full(hidden, unembed):
    logits = transformer.project_logits(hidden, unembed)
    return losses.masked_cross_entropy(logits, x0, xt, mask_id)

  def chunked(hidden, unembed):
    project = functools.partial(transformer.project_logits, unembed_VxD=unembed)
    return losses.chunked_masked_cross_entropy(project, hidden, x0, xt, mask_id, chunk)

  ref = _reference(hidden, unembed, x0, xt, mask_id)
  ce_bound, grad_h_bound, grad_w_bound = _one_pass_bounds(ref)
  got, want = jax.jit(chunked)(hidden, unembed), jax.jit(full)(hidden, unembed)
  assert got.shape == (BATCH, LENGTH) and got.dtype == jnp.float32
  roundoff.assert_within(got, want, 2 * ce_bound, "cross-entropy")
  roundoff.assert_within(got, ref["ce"], ce_bound, "cross-entropy vs float64")
  assert np.all(np.asarray(got)[~ref["scored"]] == 0)
  if dtype != jnp.float32:
    return  # bfloat16 gradients are rounded to bfloat16 per chunk: not this bound
  total = lambda f: jax.jit(jax.grad(lambda h, w: jnp.sum(f(h, w)), argnums=(0, 1)))
  (gh, gw), (gh_full, gw_full) = total(chunked)(hidden, unembed), total(full)(hidden, unembed)
  roundoff.assert_within(gh, gh_full, 2 * grad_h_bound, "hidden gradient")
  roundoff.assert_within(gw, gw_full, 2 * grad_w_bound, "table gradient")
  roundoff.assert_within(gw, ref["grad_logits"].reshape(-1, ref["p"].shape[-1]).T
                         @ ref["h"].reshape(-1, ref["h"].shape[-1]), grad_w_bound,
                         "table gradient vs float64")


def test_chunked_loss_does_not_keep_the_whole_logits():
  batch, length, width, vocab, chunk = 4, 64, 32, 4096, 8
  hidden, unembed, x0, xt = _chunk_case(0, vocab, jnp.float32, vocab=vocab, width=width)
  hidden = jnp.tile(hidden, (1, length // LENGTH, 1))
  x0, xt = jnp.tile(x0, (1, length // LENGTH)), jnp.tile(xt, (1, length // LENGTH))

  def temp_bytes(ce_fn):
    grad = jax.jit(jax.grad(lambda h, w: jnp.sum(ce_fn(h, w)), argnums=(0, 1)))
    return grad.lower(hidden, unembed).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = batch * length * vocab * 4
  full = temp_bytes(lambda h, w: losses.masked_cross_entropy(
      transformer.project_logits(h, w), x0, xt, vocab))
  chunked = temp_bytes(lambda h, w: losses.chunked_masked_cross_entropy(
      functools.partial(transformer.project_logits, unembed_VxD=w), h, x0, xt, vocab, chunk))
  assert full >= logits_bytes > chunked, (full, chunked, logits_bytes)


def test_chunked_cross_entropy_rejects_bad_arguments():
  hidden, unembed, x0, xt = _chunk_case(0, 37, jnp.float32)
  project = functools.partial(transformer.project_logits, unembed_VxD=unembed)
  for chunk in (0, -2, 2.5, True):
    with pytest.raises(ValueError, match="chunk_length"):
      losses.chunked_masked_cross_entropy(project, hidden, x0, xt, 37, chunk)
  with pytest.raises(ValueError, match="hidden_BxLxD"):
    losses.chunked_masked_cross_entropy(project, hidden[0], x0, xt, 37, 4)
  with pytest.raises(ValueError, match="x0_BxL"):
    losses.chunked_masked_cross_entropy(project, hidden, x0[:, 1:], xt, 37, 4)
  for chunk in (-1, True, 1.5):
    with pytest.raises(ValueError, match="logits_chunk"):
      train_lib.LossConfig(mask_id=MASK_ID, logits_chunk=chunk)
  # An apply_fn that only returns logits cannot serve the chunked loss.
  logits_only = lambda params, tokens, valid, t: None
  with pytest.raises(ValueError, match="make_apply_fn"):
    train_lib.loss_fn({}, logits_only, _batch(0), jax.random.key(0),
                      train_lib.LossConfig(mask_id=MASK_ID, logits_chunk=4))


def test_elbo_from_cross_entropies_is_the_elbo():
  hidden, unembed, x0, xt = _chunk_case(3, 37, jnp.float32)
  logits = transformer.project_logits(hidden, unembed)
  t = jnp.linspace(0.1, 1.0, BATCH)
  maskable = jnp.asarray(np.random.default_rng(4).random((BATCH, LENGTH)) < 0.8)
  schedule = schedules.get_schedule("linear")
  for mask in (None, maskable):
    # Op by op (eager), the same operations on the same values: equal.
    want = losses.continuous_elbo(logits, x0, xt, t, schedule, 37, eps=0.01, maskable_BxL=mask)
    ce = losses.masked_cross_entropy(logits, x0, xt, 37)
    got = losses.continuous_elbo_from_cross_entropy(ce, t, schedule, eps=0.01, maskable_BxL=mask)
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="ce_BxL"):
    losses.continuous_elbo_from_cross_entropy(ce[0], t, schedule)


def _batch(seed):
  rng = np.random.default_rng(seed)
  valid = np.asarray(_valid())
  maskable = valid & (np.arange(LENGTH)[None, :] >= 3)  # a 3-token prompt
  tokens = np.where(valid, rng.integers(0, VOCAB, (BATCH, LENGTH)), 0)
  return {"tokens": jnp.asarray(tokens, jnp.int32), "valid": jnp.asarray(valid),
          "maskable": jnp.asarray(maskable)}


@pytest.mark.parametrize("head", [False, True])
def test_train_loss_with_chunked_logits_equals_the_whole_logits(head):
  config = HEAD_CONFIG if head else CONFIG
  model = spec_head.SpecHeadTransformer(config) if head else models.Transformer(config)
  params = (spec_head.init_params if head else models.init_params)(config, jax.random.key(1))
  params = jax.tree.map(lambda p: 4 * p, params)  # sharper logits than at initialization
  apply_fn = train_lib.make_apply_fn(model)
  loss_config = train_lib.LossConfig(mask_id=MASK_ID, prefix_fraction=0.5,
                                     head_weight=0.5 if head else 0.0, head_items=6)
  batch, key = _batch(5), jax.random.key(6)

  def value_and_grad(config):
    fn = functools.partial(train_lib.loss_fn, apply_fn=apply_fn, batch=batch, key=key,
                           config=config)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

  (_, metrics), grads = value_and_grad(loss_config)
  (_, chunked), chunked_grads = value_and_grad(
      dataclasses.replace(loss_config, logits_chunk=5))
  # The masked states, times and logits the loss used (read off its model call).
  seen = []

  def spy(params, tokens, valid, t, *items, **kwargs):
    out = apply_fn(params, tokens, valid, t, *items, **kwargs)
    seen.append((tokens, t, out))
    return out

  train_lib.loss_fn(params, spy, batch, key, loss_config)
  xt, t, outputs = np.asarray(seen[0][0]), np.asarray(seen[0][1]), seen[0][2]
  scale = max(1.0, max(float(np.abs(x).max()) for x in jax.tree.leaves(outputs)))
  # Per position, each pass's cross-entropy is within 2 gamma(chain) max(1, |logits|)
  # (the network's logits, first-order model of roundoff.transformer_chain, moved twice
  # as far by the log-softmax) plus the log-softmax's gamma(1 + ce). A row's loss weighs
  # the sum over its masked positions by 1 / (masked positions) (prefix rows) or by
  # w(t) (1 - eps) / (maskable positions) (ELBO rows), so the absolute parts add up to
  # at most W = max(1, w(t) (1 - eps) masked / maskable) per row; the relative part and
  # the sums over positions add gamma(chain + L) times the value itself. The head
  # averages over its items, weighted by head_weight.
  chain = roundoff.fef_chain(dataclasses.replace(config, num_layers=config.num_layers + head),
                             LENGTH) + roundoff.log_softmax_chain(VOCAB)
  gamma = roundoff.gamma(chain + LENGTH)
  masked = (xt == MASK_ID).sum(1)
  maskable = np.asarray(batch["maskable"]).sum(1)
  weight_B = np.where(masked > 0, np.maximum(
      (1 - loss_config.eps) / t * masked / np.maximum(maskable, 1), 1.0), 0.0)

  def bound(weight, value):
    return 2 * (weight * (2 * gamma * scale + gamma) + gamma * abs(float(value)))

  bounds = {"loss": bound(weight_B.mean() + loss_config.head_weight, metrics["loss"]),
            # A mean over the ELBO rows only: at most the largest row's, in bits.
            "elbo_bits": bound(weight_B.max(), metrics["elbo_bits"]) / np.log(2)}
  if head:
    bounds["head_ce"] = bound(1.0, metrics["head_ce"])
  for name, value_bound in bounds.items():
    roundoff.assert_within(chunked[name], metrics[name], value_bound, name)
  assert float(chunked["masked_fraction"]) == float(metrics["masked_fraction"])
  # Gradients: as in test_sharding.py, round-off relative to the global norm, along the
  # forward chain, the backward chain and the sum over the batch's positions.
  grad_norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))
  grad_bound = 2 * roundoff.gamma(2 * chain + BATCH * LENGTH) * grad_norm
  assert jax.tree.structure(chunked_grads) == jax.tree.structure(grads)
  for path, g in jax.tree_util.tree_leaves_with_path(chunked_grads):
    want = functools.reduce(lambda tree, k: tree[k.key], path, grads)
    roundoff.assert_within(g, want, grad_bound, jax.tree_util.keystr(path))
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads)) > 100 * grad_bound


def test_make_apply_fn_serves_the_default_loss_unchanged(params):
  apply_fn = train_lib.make_apply_fn(models.Transformer(CONFIG))
  tokens, valid = _tokens(7), _valid()
  np.testing.assert_array_equal(apply_fn(params, tokens, valid, None),
                                _apply(CONFIG, params, tokens, valid))
  hidden, unembed = apply_fn(params, tokens, valid, None, features=True)
  np.testing.assert_array_equal(transformer.project_logits(hidden, unembed),
                                _apply(CONFIG, params, tokens, valid))


# --- Optimizer precision ----------------------------------------------------------------------


def _toy_params_and_grads(seed, steps=5):
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)},
            "norm": {"scale": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
           for _ in range(steps)]
  return params, grads


def _run(optimizer, params, grads):
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_the_default_optimizer_is_the_documented_float32_adamw():
  config = optim.OptimizerConfig(learning_rate=0.1, warmup_steps=2, total_steps=5)
  params, grads = _toy_params_and_grads(0)
  got, state = _run(optim.make_optimizer(config), params, grads)
  assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))
  # Clipping, then AdamW with weight decay on matrices only, float32 moments.
  reference = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(optim.learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay,
                  mask=lambda tree: jax.tree.map(lambda p: p.ndim >= 2, tree)))
  want, _ = _run(reference, params, grads)
  explicit, _ = _run(optim.make_optimizer(dataclasses.replace(config, mu_dtype="float32")),
                     params, grads)
  for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(explicit)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  with pytest.raises(ValueError, match="mu_dtype"):
    optim.OptimizerConfig(mu_dtype="float8")


def _unigram_apply(params, tokens_BxL, valid_BxL, t_B):
  """A per-position unigram 'model': logits[b, i] = table[i] (ignores the input)."""
  del valid_BxL, t_B
  return jnp.broadcast_to(params["table"], (*tokens_BxL.shape, VOCAB))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_bfloat16_first_moment_trains_with_the_documented_dtypes(accumulate):
  optimizer = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=0.1, warmup_steps=0, total_steps=60, weight_decay=0.0,
      grad_accum_steps=accumulate, mu_dtype="bfloat16"))
  state = train_lib.create_train_state({"table": jnp.zeros((LENGTH, VOCAB))}, optimizer,
                                       jax.random.key(0))
  step = jax.jit(functools.partial(
      train_lib.train_step, apply_fn=_unigram_apply, optimizer=optimizer,
      config=train_lib.LossConfig(mask_id=MASK_ID, prefix_fraction=0.3, ema_decay=0.9)))
  rng = np.random.default_rng(0)
  target = np.arange(LENGTH) % VOCAB
  losses_seen = []
  for _ in range(60 * accumulate):
    tokens = np.where(rng.random((32, LENGTH)) < 0.9, target, 0).astype(np.int32)
    state, metrics = step(state, {"tokens": jnp.asarray(tokens)})
    losses_seen.append(float(metrics["loss"]))
  assert np.mean(losses_seen[-10:]) < 0.5 * np.mean(losses_seen[:10])
  np.testing.assert_array_equal(np.asarray(state.params["table"]).argmax(-1), target)
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(s, "mu")]
  assert len(adam) == 1
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam[0].mu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(adam[0].nu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.ema_params)))
  if accumulate > 1:  # the micro-batch gradients accumulate in float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state.acc_grads))


# --- Buffer donation --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["default", "bfloat16_mu", "accumulate", "skip", "head"])
def test_the_train_step_can_donate_every_state_buffer(variant, params):
  # run.py jits train_step with donate_argnums=0: XLA may then write the new state into
  # the old one's buffers, but only where an input leaf has an output of its shape and
  # dtype and no buffer appears twice in the state.
  head = variant == "head"
  config = HEAD_CONFIG if head else CONFIG
  model = spec_head.SpecHeadTransformer(config) if head else models.Transformer(config)
  params = spec_head.init_params(config, jax.random.key(0)) if head else params
  optimizer = optim.make_optimizer(optim.OptimizerConfig(
      total_steps=10, warmup_steps=1, mu_dtype="bfloat16" if variant == "bfloat16_mu" else None,
      grad_accum_steps=2 if variant == "accumulate" else 1))
  state = train_lib.create_train_state(params, optimizer, jax.random.key(1))
  leaves = jax.tree.leaves(state)
  assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)
  step = jax.jit(functools.partial(
      train_lib.train_step, apply_fn=train_lib.make_apply_fn(model), optimizer=optimizer,
      config=train_lib.LossConfig(mask_id=MASK_ID, head_weight=0.5 if head else 0.0),
      skip_nonfinite=variant == "skip"), donate_argnums=0)
  text = step.lower(state, _batch(0)).as_text()
  assert text.count("tf.aliasing_output") == len(leaves), variant
