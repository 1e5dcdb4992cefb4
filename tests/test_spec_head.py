"""The single-pass speculative head: teacher forcing, exact sampling of its joint, training.

The head's item j depends on the values of items < j only, and equals the head
run on the prefix of length j + 1 (teacher-forcing equivalence). FeF with
`verifier="head"` draws a step's set from the head's joint: on a tiny random
model (V=3, four positions, 81 outcomes) its samples match the joint computed by
teacher-forced enumeration (chi-square at alpha = 1e-3, marked `slow`), and the
product of the marginals is rejected.
"""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fef_jax as fj
from fef_jax import models
from fef_jax.models import spec_head
from fef_jax.train import head_loss
from fef_jax.train import masking
from fef_jax.train import step as train_lib
from tests import roundoff

VOCAB = 3
MASK_ID = VOCAB
LENGTH = 4
CONFIG = spec_head.SpecHeadConfig(vocab_size=VOCAB, mask_id=MASK_ID, max_length=8, d_model=16,
                                  num_layers=1, num_heads=2, mlp_dim=32, head_layers=2)


@functools.lru_cache(maxsize=None)
def _denoiser(scale=1.0):
  """A random head model; `scale` sharpens it (every parameter multiplied)."""
  params = spec_head.init_params(CONFIG, jax.random.key(0))
  params = jax.tree.map(lambda p: p * scale, params)
  return spec_head.SpecHeadDenoiser(spec_head.SpecHeadTransformer(CONFIG), params)


@functools.lru_cache(maxsize=None)
def _jitted(scale=1.0):
  """(hidden, head_logits) of `_denoiser(scale)`, jit-compiled (eager Flax is slow)."""
  denoiser = _denoiser(scale)
  return jax.jit(denoiser.hidden), jax.jit(denoiser.head_logits)


def _items(seed, batch=3, length=8, num_items=6):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (batch, length))
  positions = np.stack([rng.permutation(length)[:num_items] for _ in range(batch)])
  for b in range(batch):
    tokens[b, positions[b]] = MASK_ID
  values = rng.integers(0, VOCAB, (batch, num_items))
  return (jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
          jnp.asarray(values, jnp.int32))


def test_head_items_depend_only_on_earlier_values_and_match_each_prefix_alone():
  hidden_fn, head_fn = _jitted()
  tokens, positions, values = _items(0)
  _, hidden = hidden_fn(tokens)
  num_items = positions.shape[1]
  valid = jnp.ones(positions.shape, bool)
  full = head_fn(hidden, positions, values, valid)
  # Fewer items (or queried items) make other shapes, so other programs: two passes'
  # round-off of the head over the same hidden states.
  bound = roundoff.two_pass_bound(roundoff.spec_head_chain(CONFIG, num_items), full)
  for j in range(num_items):
    alone = head_fn(hidden, positions[:, :j + 1], values[:, :j + 1], valid[:, :j + 1])
    np.testing.assert_allclose(alone[:, j], full[:, j], rtol=0, atol=bound)
    changed = values.at[:, j:].set((values[:, j:] + 1) % VOCAB)
    np.testing.assert_allclose(head_fn(hidden, positions, changed, valid)[:, :j + 1],
                               full[:, :j + 1], atol=1e-5)
  # Invalid items are never attended to; queries pick items out of the same pass.
  garbage = values.at[:, 3:].set(0)
  short = head_fn(hidden, positions, garbage,
                  jnp.broadcast_to(jnp.arange(num_items) < 3, positions.shape))
  np.testing.assert_allclose(short[:, :3], full[:, :3], atol=1e-5)
  queries = jnp.array([[5, 0], [2, 2], [1, 4]], jnp.int32)
  np.testing.assert_allclose(head_fn(hidden, positions, values, valid, queries),
                             jnp.take_along_axis(full, queries[..., None], axis=1), rtol=0,
                             atol=bound)


def test_backbone_outputs_are_the_plain_transformer_s():
  denoiser = _denoiser()
  tokens, _, _ = _items(1)
  plain = models.Denoiser(models.Transformer(CONFIG), denoiser.params["backbone"])
  want = plain(tokens)
  # Other programs (`hidden` also returns the hidden states, which changes XLA's
  # fusion) of the same backbone: two passes' round-off.
  bound = roundoff.two_pass_bound(roundoff.fef_chain(CONFIG, tokens.shape[1]), want)
  np.testing.assert_allclose(denoiser(tokens), want, rtol=0, atol=bound)
  logits, hidden = denoiser.hidden(tokens)
  np.testing.assert_allclose(logits, want, rtol=0, atol=bound)
  assert hidden.shape == tokens.shape + (CONFIG.d_model,)


def _head_joint(denoiser, scale_positions=tuple(range(LENGTH))):
  """Exact joint of the head over all-masked `LENGTH` positions, left to right: [V]*L."""
  outcomes = jnp.asarray(list(itertools.product(range(VOCAB), repeat=LENGTH)), jnp.int32)
  tokens = jnp.full((len(outcomes), LENGTH), MASK_ID, jnp.int32)
  _, hidden = denoiser.hidden(tokens)
  positions = jnp.broadcast_to(jnp.asarray(scale_positions, jnp.int32), outcomes.shape)
  logp = jax.nn.log_softmax(denoiser.head_logits(hidden, positions, outcomes,
                                                 jnp.ones(outcomes.shape, bool)))
  joint = jnp.exp(jnp.sum(jnp.take_along_axis(logp, outcomes[..., None], axis=-1), axis=(1, 2)))
  return np.asarray(joint, np.float64).reshape((VOCAB,) * LENGTH)


def _gof(samples, probs):
  empirical = fj.stats.empirical_distribution(np.asarray(samples), VOCAB)
  counts = np.round(empirical * samples.shape[0]).reshape(-1)
  return fj.stats.chi_square_gof(counts, probs.reshape(-1) / probs.sum())[2]


@pytest.mark.slow
@pytest.mark.parametrize("window", [1, 3])
def test_head_verifier_samples_the_head_joint(window):
  denoiser = _denoiser(4.0)
  joint = _head_joint(denoiser)
  marginals = np.asarray(jax.nn.softmax(denoiser(jnp.full((1, LENGTH), MASK_ID, jnp.int32))[0]))
  product = functools.reduce(np.multiply.outer, list(marginals.astype(np.float64)))
  assert fj.stats.total_variation(joint, product) > 0.1  # the test has teeth
  tokens = jnp.full((20_000, LENGTH), MASK_ID, jnp.int32)
  result = fj.sample(denoiser, tokens, jax.random.key(window), "fef", mask_id=MASK_ID,
                     verifier="head", window=window)
  assert _gof(result.tokens, joint) > 1e-3
  assert _gof(result.tokens, product) < 1e-6
  parallel = fj.sample(denoiser, tokens, jax.random.key(7), "ancestral", mask_id=MASK_ID,
                       steps=1)
  assert _gof(parallel.tokens, joint) < 1e-6  # the product of marginals is rejected
  # One backbone pass, then one head pass per round; sequences in layer-positions.
  stats = result.stats
  np.testing.assert_array_equal(stats.nfe, 1 + stats.rounds)
  units = LENGTH * CONFIG.num_layers + stats.rounds * LENGTH * CONFIG.head_layers
  np.testing.assert_array_equal(stats.sequences, -(-units // (LENGTH * CONFIG.num_layers)))
  assert np.all(stats.rounds >= -(-LENGTH // window))


def _prompts():
  tokens = np.full((3, 6), MASK_ID, np.int32)
  tokens[:, 0] = [0, 1, 2]
  tokens[2, 3] = 1
  return tokens


HEAD_OPTIONS = dict(verifier="head", window=2, block_length=3, steps=3, order="random")


def test_head_sampler_jit_equals_eager_and_keeps_the_prompt():
  denoiser = _denoiser(4.0)
  tokens = jnp.asarray(_prompts())
  run_it = lambda: fj.sample(denoiser, tokens, jax.random.key(2), "fef", mask_id=MASK_ID,
                             **HEAD_OPTIONS)
  jitted = run_it()
  with jax.disable_jit():
    eager = run_it()
  np.testing.assert_array_equal(jitted.tokens, eager.tokens)
  np.testing.assert_array_equal(jitted.stats.nfe, eager.stats.nfe)
  out = np.asarray(jitted.tokens)
  assert not (out == MASK_ID).any()
  np.testing.assert_array_equal(out[tokens != MASK_ID], np.asarray(tokens)[tokens != MASK_ID])
  assert np.all(jitted.stats.nfe > jitted.stats.rounds)  # backbone passes counted too


@pytest.mark.parametrize("mode", ["commit_set", "joint_then_remask"])
def test_head_sampler_rows_are_independent(mode):
  denoiser = _denoiser(4.0)
  tokens = _prompts()
  other = tokens.copy()
  other[1:, 0] = (other[1:, 0] + 1) % VOCAB
  key = jax.random.key(3)
  options = dict(HEAD_OPTIONS, mode=mode)
  first = fj.sample(denoiser, jnp.asarray(tokens), key, "fef", mask_id=MASK_ID, **options)
  second = fj.sample(denoiser, jnp.asarray(other), key, "fef", mask_id=MASK_ID, **options)
  np.testing.assert_array_equal(first.tokens[0], second.tokens[0])
  np.testing.assert_array_equal(first.stats.nfe[0], second.stats.nfe[0])
  assert not np.array_equal(first.tokens[1:], second.tokens[1:])


def _apply_fn():
  return train_lib.make_apply_fn(spec_head.SpecHeadTransformer(CONFIG))


def test_random_items_order_every_masked_position_once():
  tokens, _, _ = _items(2)
  x0 = jnp.where(tokens == MASK_ID, 1, tokens)
  positions, values, valid = head_loss.random_items(jax.random.key(0), tokens, x0, MASK_ID, 8)
  for b in range(tokens.shape[0]):
    masked = set(np.flatnonzero(np.asarray(tokens[b]) == MASK_ID))
    assert set(np.asarray(positions[b])[np.asarray(valid[b])]) == masked
    assert len(set(np.asarray(positions[b]))) == 8
  np.testing.assert_array_equal(values, jnp.take_along_axis(x0, positions, axis=1))


def test_head_term_equals_the_any_order_cross_entropy_of_each_prefix():
  denoiser = _denoiser()
  rng = np.random.default_rng(4)
  batch = {"tokens": jnp.asarray(rng.integers(0, VOCAB, (5, 8)), jnp.int32)}
  config = train_lib.LossConfig(mask_id=MASK_ID, head_weight=0.5, prefix_fraction=0.4)
  key = jax.random.key(5)
  _, metrics = train_lib.loss_fn(denoiser.params, _apply_fn(), batch, key, config)
  # The same masks and order, scored by running the head on every prefix alone.
  mask_key, items_key = jax.random.split(key)
  xt, _, _ = masking.training_mask(mask_key, batch["tokens"], fj.schedules.get_schedule("linear"),
                                   MASK_ID, prefix_fraction=0.4, eps=config.eps,
                                   maskable_BxL=jnp.ones((5, 8), bool))
  positions, values, valid = head_loss.random_items(items_key, xt, batch["tokens"], MASK_ID, 8)
  hidden_fn, head_fn = _jitted()
  _, hidden = hidden_fn(xt)
  ce_5x8 = np.zeros((5, 8))
  for j in range(8):
    logits = head_fn(hidden, positions[:, :j + 1], values[:, :j + 1], valid[:, :j + 1])
    ce_5x8[:, j] = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[:, j])),
                                       np.asarray(values[:, j:j + 1]), axis=1)[:, 0]
  count = np.asarray(valid).sum(axis=1)
  expected = np.where(np.asarray(valid), ce_5x8, 0.0).sum(axis=1) / np.maximum(count, 1)
  assert len(set(count.tolist())) > 1  # rows of different sizes
  assert float(metrics["head_ce"]) == pytest.approx(np.mean(expected), rel=1e-4)
  no_head = dataclasses.replace(config, head_weight=0.0)
  _, plain = train_lib.loss_fn(denoiser.params, _apply_fn(), batch, mask_key, no_head)
  assert float(metrics["loss"]) == pytest.approx(
      float(plain["loss"]) + 0.5 * float(metrics["head_ce"]), rel=1e-4)


def test_training_with_the_head_lowers_both_terms():
  # Sequences `a b a b`: the marginals cannot know `a`, the head learns to copy it.
  rng = np.random.default_rng(6)
  pairs = rng.integers(0, VOCAB, (64, 2))
  batch = {"tokens": jnp.asarray(np.concatenate([pairs, pairs], axis=1), jnp.int32)}
  optimizer = optax.adam(1e-2)
  config = train_lib.LossConfig(mask_id=MASK_ID, head_weight=1.0, ema_decay=0.0)
  state = train_lib.create_train_state(_denoiser().params, optimizer, jax.random.key(7))
  step = jax.jit(functools.partial(train_lib.train_step, apply_fn=_apply_fn(),
                                   optimizer=optimizer, config=config))
  history = []
  for _ in range(150):
    state, metrics = step(state, batch)
    history.append((float(metrics["loss"]), float(metrics["head_ce"])))
  first, last = np.mean(history[:10], axis=0), np.mean(history[-10:], axis=0)
  assert last[0] < 0.8 * first[0] and last[1] < 0.8 * first[1], (first, last)


def test_bad_head_options_raise():
  plain = models.Denoiser(models.Transformer(CONFIG), _denoiser().params["backbone"])
  tokens = jnp.full((2, LENGTH), MASK_ID, jnp.int32)
  with pytest.raises(TypeError, match="speculative head"):
    fj.sample(plain, tokens, jax.random.key(0), "fef", mask_id=MASK_ID, verifier="head")
  with pytest.raises(ValueError, match="unknown verifier"):
    fj.sample(_denoiser(), tokens, jax.random.key(0), "fef", mask_id=MASK_ID, verifier="tree")
  with pytest.raises(ValueError, match="no cache"):
    fj.sample(_denoiser(), tokens, jax.random.key(0), "fef", mask_id=MASK_ID, verifier="head",
              cache="exact", block_length=2)
  with pytest.raises(TypeError, match="verifier"):
    fj.sample(_denoiser(), tokens, jax.random.key(0), "confidence", mask_id=MASK_ID,
              verifier="head")
  with pytest.raises(ValueError, match="head_layers"):
    dataclasses.replace(CONFIG, head_layers=0)
  with pytest.raises(ValueError, match="head_weight"):
    train_lib.LossConfig(mask_id=MASK_ID, head_weight=-1.0)
  with pytest.raises(ValueError, match="head_items"):
    train_lib.LossConfig(mask_id=MASK_ID, head_items=1.5)


@dataclasses.dataclass(frozen=True, eq=False)
class _OracleWithHead:
  """A head denoiser whose backbone is an exact oracle and whose head is an unrelated
  random model: a deliberately wrong drafter (hashed by identity)."""
  oracle: fj.oracles.JointTable
  head_model: spec_head.SpecHeadDenoiser
  head_layers: int = CONFIG.head_layers
  num_layers: int = CONFIG.num_layers

  def __call__(self, tokens_NxL):
    return self.oracle.logits_fn(tokens_NxL)

  def hidden(self, tokens_NxL):
    return self.oracle.logits_fn(tokens_NxL), self.head_model.hidden(tokens_NxL)[1]

  def head_logits(self, hidden, positions_NxK, values_NxK, valid_NxK, queries_NxW=None):
    return self.head_model.head_logits(hidden, positions_NxK, values_NxK, valid_NxK,
                                       queries_NxW)


@dataclasses.dataclass(frozen=True, eq=False)
class _BlockCausalOracleWithHead(_OracleWithHead):
  """`_OracleWithHead` over an oracle seen block-causally (`fj.oracles.BlockCausal`,
  whose cache is the state itself), with the exact cache's interface: `block_hidden`
  gives the head model's hidden states of each copy (the cached state with the span
  replaced), at the span."""
  oracle: fj.oracles.BlockCausal

  @property
  def exact_cache(self):
    return True

  @property
  def block_length(self):
    return self.oracle.block_length

  def __call__(self, tokens_NxL):
    return self.oracle(tokens_NxL)

  def hidden(self, tokens_NxL):
    return self.oracle(tokens_NxL), self.head_model.hidden(tokens_NxL)[1]

  def encode(self, tokens_NxL):
    return self.oracle.encode(tokens_NxL)

  def block_logits(self, cache_NxL, tokens_NxCxS, start_N):
    return self.oracle.block_logits(cache_NxL, tokens_NxCxS, start_N)

  def block_hidden(self, cache_NxL, tokens_NxCxS, start_N):
    batch, copies, span = tokens_NxCxS.shape
    copies_NxCxL = jax.vmap(lambda row_L, span_CxS, start: jax.lax.dynamic_update_slice(
        jnp.broadcast_to(row_L, (copies, LENGTH)), span_CxS, (0, start)))(
            cache_NxL, tokens_NxCxS, start_N)
    hidden_NxCxLxD = self.head_model.hidden(copies_NxCxL.reshape(batch * copies, LENGTH))[1]
    hidden_NxCxLxD = hidden_NxCxLxD.reshape(batch, copies, LENGTH, -1)
    hidden_NxCxSxD = jax.vmap(lambda h, start: jax.lax.dynamic_slice_in_dim(
        h, start, span, axis=1))(hidden_NxCxLxD, start_N)
    return self.block_logits(cache_NxL, tokens_NxCxS, start_N), hidden_NxCxSxD


@functools.lru_cache(maxsize=None)
def _dependent_joint():
  """A sparse random joint over LENGTH tokens (strong dependencies between positions)."""
  rng = np.random.default_rng(8)
  probs = rng.dirichlet(np.full(VOCAB ** LENGTH, 0.3)) + 1e-3
  return (probs / probs.sum()).reshape((VOCAB,) * LENGTH)


def _oracle_with_head(cached=False):
  """The exact oracle of `_dependent_joint` with a wrong head; `cached`: seen
  block-causally in attention blocks of 2, with the exact cache's interface."""
  table = fj.oracles.JointTable(jnp.asarray(_dependent_joint(), jnp.float32))
  assert table.mask_id == MASK_ID
  if cached:
    return _BlockCausalOracleWithHead(fj.oracles.BlockCausal(table, 2), _denoiser(4.0))
  return _OracleWithHead(table, _denoiser(4.0))


DRAFTER_OPTIONS = dict(drafter="head", window=3, block_length=2, steps=2, order="random")


def _sample_answers(denoiser, key, **options):
  tokens = jnp.full((20_000, LENGTH), MASK_ID, jnp.int32)
  return fj.sample(denoiser, tokens, key, "fef", mask_id=MASK_ID, **options)


def _tempered_left_to_right_joint(denoiser, temperature):
  """The joint `prod_j softmax(log p(x_j | x_<j) / T)` left to right, enumerated."""
  probs = np.zeros((VOCAB,) * LENGTH)
  for answer in itertools.product(range(VOCAB), repeat=LENGTH):
    state = [MASK_ID] * LENGTH
    p = 1.0
    for i, value in enumerate(answer):
      logits = np.asarray(denoiser(jnp.asarray([state], jnp.int32))[0, i], np.float64)
      logits = logits[:VOCAB] / temperature
      p *= np.exp(logits[value] - np.logaddexp.reduce(logits))
      state[i] = value
    probs[answer] = p
  return probs


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(drafter="head", window=3),
                                     DRAFTER_OPTIONS,
                                     dict(drafter="head", window=4, mode="joint_then_remask",
                                          steps=2, temperature=0.7)])
def test_head_drafts_verified_by_copies_sample_the_backbone_joint(options):
  denoiser = _oracle_with_head()
  joint = _dependent_joint()
  if options.get("temperature", 1.0) != 1.0:
    # Every factor warped: the prefix factorization of the tempered conditionals.
    joint = _tempered_left_to_right_joint(denoiser, options["temperature"])
  head = _head_joint(denoiser.head_model)
  assert fj.stats.total_variation(joint, head) > 0.3  # the head is far from the backbone
  result = _sample_answers(denoiser, jax.random.key(9), **options)
  assert _gof(result.tokens, joint) > 1e-3
  assert _gof(result.tokens, head) < 1e-6
  # Each round: one call of the copies and `window` head passes; each step: the backbone.
  stats = jax.device_get(result.stats)
  assert np.all(stats.rounds >= 1)
  assert stats.drafts_accepted.sum() < stats.drafts_examined.sum()  # the head errs
  steps = options.get("steps", 1)
  np.testing.assert_array_equal(stats.nfe, steps + stats.rounds * (1 + options["window"]))
  assert 0.0 < float(np.mean(result.stats.acceptance_rate)) < 1.0


CACHED_DRAFTER_OPTIONS = dict(drafter="head", cache="exact", block_length=2, window=2)


@pytest.mark.slow
@pytest.mark.parametrize("options, steps", [
    (CACHED_DRAFTER_OPTIONS, 2),
    # Two steps per block: the second step's block-local pass sees a revealed token.
    (dict(CACHED_DRAFTER_OPTIONS, mode="joint_then_remask", steps=4, order="random"), 4)])
def test_head_drafts_over_the_exact_cache_sample_the_backbone_joint(options, steps):
  # Blocks of 2 decided left to right: the later block is masked whenever a block is
  # decided, so the block-causal oracle's conditionals are the table's.
  denoiser = _oracle_with_head(cached=True)
  joint = _dependent_joint()
  assert fj.stats.total_variation(joint, _head_joint(denoiser.head_model)) > 0.3
  result = _sample_answers(denoiser, jax.random.key(10), **options)
  assert _gof(result.tokens, joint) > 1e-3
  assert _gof(result.tokens, _head_joint(denoiser.head_model)) < 1e-6
  stats = jax.device_get(result.stats)
  assert stats.drafts_accepted.sum() < stats.drafts_examined.sum()  # the head errs
  # The first call, one refresh (entering the second block), one block-local backbone
  # pass per step, and per round the copies' call and `window` head passes.
  np.testing.assert_array_equal(stats.nfe,
                                2 + steps + stats.rounds * (1 + options["window"]))


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True])
def test_head_drafts_scored_with_the_backbone_marginals_are_rejected(monkeypatch, cached):
  # The mutation the exactness test must catch: drafts drawn from the head, but the
  # acceptance ratio and residual computed with the backbone's marginals as q.
  from fef_jax import posterior, speculative
  head_drafts = speculative._head_drafts

  def marginal_q(drafter, warp_fn, state, rank_BxL, count_B, key_B, window):
    drafts_BxL, _ = head_drafts(drafter, warp_fn, state, rank_BxL, count_B, key_B, window)
    ranks_BxW = jnp.minimum(state.start_B[:, None] + jnp.arange(window)[None, :],
                            rank_BxL.shape[1] - 1)
    positions_BxW = jnp.take_along_axis(posterior.positions_by_rank(rank_BxL), ranks_BxW,
                                        axis=1)
    logq_BxLxV = warp_fn(state.draft_features_BxLxF)
    return drafts_BxL, jnp.take_along_axis(logq_BxLxV, positions_BxW[..., None], axis=1)

  monkeypatch.setattr(speculative, "_head_drafts", marginal_q)
  denoiser = _oracle_with_head(cached)  # a new object: compiled afresh with the mutation
  options = CACHED_DRAFTER_OPTIONS if cached else dict(drafter="head", window=3)
  result = _sample_answers(denoiser, jax.random.key(9), **options)
  assert _gof(result.tokens, _dependent_joint()) < 1e-6


def _check_jit_eager_rows_prompt(denoiser, tokens, options):
  """FeF with `options`: jit == eager (tokens and statistics), no mask left, the prompt
  kept, and row 0 unchanged when the other rows' prompts change. Returns the jitted
  result."""
  run_it = lambda t: fj.sample(denoiser, jnp.asarray(t), jax.random.key(2), "fef",
                               mask_id=MASK_ID, **options)
  jitted = run_it(tokens)
  with jax.disable_jit():
    eager = run_it(tokens)
  np.testing.assert_array_equal(jitted.tokens, eager.tokens)
  for name in ("nfe", "sequences", "rounds", "drafts_examined", "drafts_accepted"):
    np.testing.assert_array_equal(getattr(jitted.stats, name), getattr(eager.stats, name))
  out = np.asarray(jitted.tokens)
  assert not (out == MASK_ID).any()
  np.testing.assert_array_equal(out[tokens != MASK_ID], tokens[tokens != MASK_ID])
  other = tokens.copy()
  other[1:, 0] = (other[1:, 0] + 1) % VOCAB
  changed = run_it(other)
  np.testing.assert_array_equal(changed.tokens[0], jitted.tokens[0])
  np.testing.assert_array_equal(changed.stats.nfe[0], jitted.stats.nfe[0])
  return jitted


def test_head_drafter_jit_equals_eager_rows_independent_prompt_kept():
  jitted = _check_jit_eager_rows_prompt(_denoiser(4.0), _prompts(), DRAFTER_OPTIONS)
  # Statistics: per step a backbone pass (L * num_layers layer-positions), per round
  # the copies (window * L * num_layers) and `window` head passes (K * head_layers).
  stats = jax.device_get(jitted.stats)
  window, items, length = DRAFTER_OPTIONS["window"], DRAFTER_OPTIONS["block_length"], 6
  steps = stats.nfe - stats.rounds * (1 + window)
  units = (steps * length * CONFIG.num_layers
           + stats.rounds * window * (length * CONFIG.num_layers + items * CONFIG.head_layers))
  np.testing.assert_array_equal(stats.sequences, -(-units // (length * CONFIG.num_layers)))
  assert np.all(steps >= 1)


@functools.lru_cache(maxsize=None)
def _block_causal_denoiser():
  """A random block-causal head model (attention blocks of 2), sharpened."""
  config = dataclasses.replace(CONFIG, attention="block_causal", block_length=2)
  params = jax.tree.map(lambda p: 4.0 * p, spec_head.init_params(config, jax.random.key(1)))
  return spec_head.SpecHeadDenoiser(spec_head.SpecHeadTransformer(config), params)


@pytest.mark.parametrize("options", [
    dict(block_length=2, window=2),
    dict(block_length=2, window=3, steps=6, order="random", top_k=2),
    dict(block_length=1, window=2)])  # two generation blocks per attention block
def test_head_drafts_over_the_exact_cache_make_the_uncached_decisions(options):
  # The block-local pass gives the head the full pass's hidden states at the window and
  # the copies' targets are exact, so both paths decide alike (up to float round-off).
  denoiser = _block_causal_denoiser()
  rng = np.random.default_rng(4)
  tokens = np.full((32, 6), MASK_ID, np.int32)
  tokens[:, :2] = rng.integers(0, VOCAB, (32, 2))
  run_it = functools.partial(fj.sample, denoiser, jnp.asarray(tokens), jax.random.key(5),
                             "fef", mask_id=MASK_ID, drafter="head", **options)
  plain, cached = run_it(), run_it(cache="exact")
  agreement = np.mean(np.asarray(plain.tokens) == np.asarray(cached.tokens))
  assert agreement >= 0.99, agreement
  same = np.all(np.asarray(plain.tokens) == np.asarray(cached.tokens), axis=1)
  plain_stats, stats = jax.device_get((plain.stats, cached.stats))
  for name in ("rounds", "tokens", "drafts_examined", "drafts_accepted"):
    np.testing.assert_array_equal(getattr(stats, name)[same], getattr(plain_stats, name)[same])
  # Calls: the first one (its cache serves the first answer block) and a refresh entering
  # the second, beside the uncached path's. Layer-positions: the first call encodes one
  # sequence (L * num_layers), the refresh two spans of 2S (`extend`); a step's
  # block-local pass S * num_layers (whole: L * num_layers); a round's copies
  # W * S * num_layers (whole: W * L * num_layers).
  np.testing.assert_array_equal(stats.nfe[same], plain_stats.nfe[same] + 2)
  window, span, length, layers = options["window"], 2, 6, CONFIG.num_layers
  items = options["block_length"]
  steps = stats.nfe - 2 - stats.rounds * (1 + window)
  units = ((length + 2 * 2 * span) * layers + steps * span * layers
           + stats.rounds * window * (span * layers + items * CONFIG.head_layers))
  np.testing.assert_array_equal(stats.sequences, -(-units // (length * layers)))
  assert np.all(stats.sequences < plain_stats.sequences)


def test_head_drafts_over_the_exact_cache_jit_equals_eager_rows_independent():
  tokens = np.full((3, 6), MASK_ID, np.int32)
  tokens[:, :2] = [[0, 1], [2, 2], [1, 0]]
  _check_jit_eager_rows_prompt(_block_causal_denoiser(), tokens, CACHED_DRAFTER_OPTIONS)


class _Without:
  """`inner` without its attribute `missing` (hashed by identity)."""

  def __init__(self, inner, missing):
    self._inner, self._missing = inner, missing

  def __getattr__(self, name):
    if name == self._missing:
      raise AttributeError(name)
    return getattr(self._inner, name)

  def __call__(self, tokens_NxL):
    return self._inner(tokens_NxL)


class _NaNHead(_OracleWithHead):
  def head_logits(self, hidden, positions_NxK, values_NxK, valid_NxK, queries_NxW=None):
    logits = super().head_logits(hidden, positions_NxK, values_NxK, valid_NxK, queries_NxW)
    return jnp.full_like(logits, jnp.nan)


@pytest.mark.parametrize("role", ["drafter", "verifier"])
def test_nan_head_drafts_and_targets_are_reported(role):
  good = _oracle_with_head()
  tokens = jnp.full((2, LENGTH), MASK_ID, jnp.int32)
  with pytest.raises(FloatingPointError, match="NaN"):
    fj.sample(_NaNHead(good.oracle, good.head_model), tokens, jax.random.key(0), "fef",
              mask_id=MASK_ID, window=2, **{role: "head"})


def test_bad_drafter_options_raise():
  plain = models.Denoiser(models.Transformer(CONFIG), _denoiser().params["backbone"])
  tokens = jnp.full((2, LENGTH), MASK_ID, jnp.int32)
  with pytest.raises(TypeError, match="drafter='head' needs a denoiser with a speculative"):
    fj.sample(plain, tokens, jax.random.key(0), "fef", mask_id=MASK_ID, drafter="head")
  with pytest.raises(ValueError, match="unknown drafter"):
    fj.sample(_denoiser(), tokens, jax.random.key(0), "fef", mask_id=MASK_ID, drafter="tree")
  for bad in (dict(verifier="head"), dict(cache="approximate", block_length=2)):
    with pytest.raises(ValueError, match="drafter='head' drafts for the copies"):
      fj.sample(_denoiser(), tokens, jax.random.key(0), "fef", mask_id=MASK_ID,
                drafter="head", **bad)
  # Over the exact cache the head reads block-local hidden states: a denoiser with the
  # cache and a head but no `block_hidden` is refused by name.
  no_block_hidden = _Without(_oracle_with_head(cached=True), "block_hidden")
  with pytest.raises(TypeError, match="block_hidden"):
    fj.sample(no_block_hidden, tokens, jax.random.key(0), "fef", mask_id=MASK_ID,
              **CACHED_DRAFTER_OPTIONS)
  with pytest.raises(TypeError, match="drafter"):
    fj.sample(_denoiser(), tokens, jax.random.key(0), "confidence", mask_id=MASK_ID,
              drafter="head")


def test_prefix_rounds_run_on_the_head_models_backbone():
  # cache="prefix" reads the backbone's `copy_block_logits` through the head model, as
  # the comparison's block-causal model with a head is sampled.
  denoiser = _block_causal_denoiser()
  plain = models.Denoiser(models.Transformer(denoiser.model.config),
                          denoiser.params["backbone"])
  tokens = jnp.full((3, 8), MASK_ID, jnp.int32).at[:, :2].set(1)
  _, cache = denoiser.encode(tokens)
  span = jnp.zeros((3, 2, 2), jnp.int32).at[:, 1].set(MASK_ID)
  start = jnp.asarray([[2, 4], [6, 2], [4, 4]], jnp.int32)
  want = plain.copy_block_logits(plain.encode(tokens)[1], span, start)
  bound = roundoff.two_pass_bound(roundoff.fef_chain(denoiser.model.config, 8), want)
  np.testing.assert_allclose(denoiser.copy_block_logits(cache, span, start), want, rtol=0,
                             atol=bound)
  result = fj.sample(denoiser, tokens, jax.random.key(5), "fef", mask_id=MASK_ID,
                     order="parity", window=4, cache="prefix")
  np.testing.assert_array_equal(result.stats.tokens, 6)
