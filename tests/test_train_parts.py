"""Training parts that do not need the transformer: masks, optimizer, steps, checkpoints."""
import dataclasses
import functools
import json
import os
import resource
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax import models
from fef_jax import schedules
from fef_jax.train import checkpoint
from fef_jax.train import divergence
from fef_jax.train import masking
from fef_jax.train import mfu
from fef_jax.train import optim
from fef_jax.train import run
from fef_jax.train import step as train_lib

V, L, MASK = 5, 8, 5


def test_prefix_revealed_masks_reveal_the_leftmost_masked_positions():
  x0 = jax.random.randint(jax.random.key(0), (4000, L), 0, V)
  xt = jnp.where(jax.random.bernoulli(jax.random.key(1), 0.6, x0.shape), MASK, x0)
  out = np.asarray(masking.reveal_masked_prefix(jax.random.key(2), xt, x0, MASK))
  xt, x0 = np.asarray(xt), np.asarray(x0)
  revealed_counts = []
  for row in range(xt.shape[0]):
    masked = np.flatnonzero(xt[row] == MASK)
    still = np.flatnonzero(out[row] == MASK)
    if masked.size == 0:
      np.testing.assert_array_equal(out[row], xt[row])
      continue
    assert still.size >= 1
    # What stays masked is a suffix of the masked positions; the rest shows x0.
    np.testing.assert_array_equal(still, masked[masked.size - still.size:])
    shown = masked[:masked.size - still.size]
    np.testing.assert_array_equal(out[row, shown], x0[row, shown])
    if masked.size == 5:
      revealed_counts.append(shown.size)
  # c ~ Uniform{0..4} for rows with 5 masks: each value ~20% (5 binomial std. errors).
  freq = np.bincount(revealed_counts, minlength=5) / len(revealed_counts)
  assert np.all(np.abs(freq - 0.2) < 5 * np.sqrt(0.16 / len(revealed_counts)))


def test_training_mask_without_prefix_rows_is_the_forward_process():
  x0 = jnp.zeros((6, L), jnp.int32)
  xt, t, is_prefix = masking.training_mask(jax.random.key(0), x0, schedules.linear(), MASK,
                                           prefix_fraction=0.0)
  assert not np.any(np.asarray(is_prefix)) and t.shape == (6,)
  assert set(np.unique(np.asarray(xt))) <= {0, MASK}


def test_learning_rate_warms_up_then_decays_to_the_final_fraction():
  cfg = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=10, total_steps=100,
                              final_lr_fraction=0.1)
  lr = optim.learning_rate_schedule(cfg)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(100)], [0, 5e-4, 1e-3, 1e-4], rtol=1e-5)
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.OptimizerConfig(warmup_steps=200, total_steps=100)


def _toy_apply(params, tokens_BxL, valid_BxL, t_B):
  """A per-position unigram 'model': logits[b, i] = table[i] (ignores the input)."""
  del valid_BxL, t_B
  return jnp.broadcast_to(params["table"], (*tokens_BxL.shape, V))


def _toy_setup(seed=0):
  optimizer = optim.make_optimizer(optim.OptimizerConfig(learning_rate=0.1, warmup_steps=0,
                                                         total_steps=50, weight_decay=0.0))
  state = train_lib.create_train_state({"table": jnp.zeros((L, V))}, optimizer,
                                       jax.random.key(seed))
  config = train_lib.LossConfig(mask_id=MASK, prefix_fraction=0.3, ema_decay=0.9)
  step = jax.jit(functools.partial(train_lib.train_step, apply_fn=_toy_apply,
                                   optimizer=optimizer, config=config))
  return state, step, config


def _batches(n, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    tokens = np.where(rng.random((32, L)) < 0.9, np.arange(L) % V, 0).astype(np.int32)
    yield {"tokens": jnp.asarray(tokens)}


def test_train_step_learns_the_unigram_distribution_and_tracks_an_ema():
  state, step, config = _toy_setup()
  first = None
  for batch in _batches(50):
    state, metrics = step(state, batch)
    first = first if first is not None else float(metrics["loss"])
  assert float(metrics["loss"]) < 0.5 * first
  predicted = np.asarray(state.params["table"]).argmax(-1)
  np.testing.assert_array_equal(predicted, np.arange(L) % V)
  assert int(state.step) == 50
  gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.ema_params, state.params)
  assert 0 < gap["table"] < float(jnp.max(jnp.abs(state.params["table"])))
  evaluated = train_lib.eval_step(state.params, next(_batches(1)), jax.random.key(0),
                                  apply_fn=_toy_apply, config=config)
  assert float(evaluated["elbo_bits"]) < np.log2(V)


def test_checkpoint_resume_continues_bit_identically(tmp_path):
  state, step, _ = _toy_setup()
  batches = list(_batches(20))
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2)
  uninterrupted = state
  for i, batch in enumerate(batches):
    uninterrupted, _ = step(uninterrupted, batch)
    if i == 9:
      checkpoint.save(manager, 10, uninterrupted, {"position": 10}, "toy")
  manager.wait_until_finished()
  fresh, _, _ = _toy_setup(seed=1)  # a different starting point: everything must come back
  restored, data_state = checkpoint.restore_latest(
      checkpoint.make_manager(str(tmp_path)), checkpoint.abstract(fresh), "toy")
  assert data_state == {"position": 10} and int(restored.step) == 10
  for batch in batches[data_state["position"]:]:
    restored, _ = step(restored, batch)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_configuration_is_rejected_clearly(tmp_path):
  state, _, _ = _toy_setup()
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, 1, state, {}, "model=A")
  manager.wait_until_finished()
  with pytest.raises(checkpoint.CheckpointMismatchError, match="another configuration"):
    checkpoint.restore_latest(manager, checkpoint.abstract(state), "model=B")
  assert checkpoint.restore_latest(
      checkpoint.make_manager(str(tmp_path / "empty")), checkpoint.abstract(state), "x") is None


def test_a_checkpoint_resumes_under_other_execution_options_only(tmp_path):
  # The fingerprint leaves out how a step computes (remat, compute dtype, attention
  # kernel), also from checkpoints written when it held them, but not the model's shape.
  source = types.SimpleNamespace(fingerprint="byte")
  base = models.TransformerConfig(vocab_size=11, mask_id=11, max_length=16, d_model=32,
                                  num_layers=2, num_heads=4, mlp_dim=64)
  same = [dataclasses.replace(base, remat=r, dtype=d, attention_impl=a)
          for r, d, a in [("full", jnp.bfloat16, "xla"),
                          ("dots_with_no_batch_dims_saveable", jnp.float16, "auto")]]
  assert {run.fingerprint(source, c) for c in [base, *same]} == {run.fingerprint(source, base)}
  assert run.fingerprint(source, dataclasses.replace(base, d_model=64)) != run.fingerprint(
      source, base)
  assert run.fingerprint(source, base) == (
      "model=TransformerConfig(vocab_size=11, mask_id=11, max_length=16, d_model=32, "
      "num_layers=2, num_heads=4, mlp_dim=64, rope_theta=10000.0, time_conditioning=False, "
      "tie_embeddings=True);data=byte")
  state, _, _ = _toy_setup()
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, 1, state, {}, f"model={base!r};data=byte")  # as stored before
  manager.wait_until_finished()
  restored, _ = checkpoint.restore_latest(manager, checkpoint.abstract(state),
                                          run.fingerprint(source, same[0]),
                                          canonical=run.canonical_fingerprint)
  assert int(restored.step) == int(state.step)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="another configuration"):
    checkpoint.restore_latest(manager, checkpoint.abstract(state),
                              run.fingerprint(source, dataclasses.replace(base, d_model=64)),
                              canonical=run.canonical_fingerprint)


def test_mfu_is_achieved_flops_over_the_known_peak():
  class Device:
    device_kind = "NVIDIA H100 80GB HBM3"
  out = mfu.utilization(1e9, 1e5, devices=[Device(), Device()])
  assert out["tflops"] == pytest.approx(100.0)
  assert out["mfu"] == pytest.approx(1e14 / (2 * 989e12))
  class Cpu:
    device_kind = "cpu"
  assert "mfu" not in mfu.utilization(1e9, 1e5, devices=[Cpu()])


def _two_checkpoints(directory):
  """A toy run checkpointed at steps 10 and 20; returns (state at 10, its abstract)."""
  state, step, _ = _toy_setup()
  manager = checkpoint.make_manager(str(directory), max_to_keep=3, async_save=False)
  at_10 = None
  for i, batch in enumerate(_batches(20)):
    state, _ = step(state, batch)
    if i + 1 in (10, 20):
      checkpoint.save(manager, i + 1, state, {"position": i + 1}, "toy")
      at_10 = state if i + 1 == 10 else at_10
  manager.wait_until_finished()
  return at_10, checkpoint.abstract(state)


def _files(step_dir):
  return sorted((os.path.join(root, name) for root, _, names in os.walk(step_dir)
                 for name in names), key=os.path.getsize)


def _flip_a_byte(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["flip a byte of the largest file", "flip array bytes",
                                    "truncate every file", "delete the largest file",
                                    "delete the metadata", "arrays that read back changed"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, damage,
                                                                        caplog):
  at_10, abstract = _two_checkpoints(tmp_path)
  files = _files(tmp_path / "20")
  if damage == "flip a byte of the largest file":
    _flip_a_byte(files[-1])
  elif damage == "flip array bytes":  # the stored arrays themselves (OCDBT data files)
    data_files = [p for p in files if os.sep + "d" + os.sep in p]
    assert data_files
    for path in data_files:
      _flip_a_byte(path)
  elif damage == "arrays that read back changed":
    # What a storage layer without its own checks would return: other bits than were
    # saved. Stand-in: the recorded checksum of one array no longer matches.
    meta_path = tmp_path / "20" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["checksums"][0] += 1
    meta_path.write_text(json.dumps(meta))
  elif damage == "truncate every file":
    for path in files:
      open(path, "r+b").truncate(os.path.getsize(path) // 2)
  elif damage == "delete the largest file":
    os.remove(files[-1])
  else:
    for path in files:
      if os.path.dirname(path).endswith("meta"):
        os.remove(path)
  with caplog.at_level("WARNING"):
    restored, data_state = checkpoint.restore_latest(
        checkpoint.make_manager(str(tmp_path)), abstract, "toy")
  assert data_state == {"position": 10} and int(restored.step) == 10
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(at_10)):
    np.testing.assert_array_equal(a, b)
  assert "step 20" in caplog.text and str(tmp_path / "20") in caplog.text


def test_a_flipped_bit_anywhere_changes_the_checksums(tmp_path):
  state, _, _ = _toy_setup()
  sums = checkpoint.checksums(state)
  table = np.asarray(state.params["table"]).copy()
  table.view(np.uint32)[1, 2] ^= 1 << 30
  flipped = state.replace(params={"table": jnp.asarray(table)})
  assert checkpoint.checksums(flipped) != sums
  assert checkpoint.checksums(jax.tree.map(jnp.copy, state)) == sums


def test_no_intact_checkpoint_names_every_failure(tmp_path):
  _, abstract = _two_checkpoints(tmp_path)
  for step in (10, 20):
    _flip_a_byte(_files(tmp_path / str(step))[-1])
  with pytest.raises(checkpoint.CheckpointCorruptError, match=r"(?s)step 20 .*step 10 "):
    checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path)), abstract, "toy")


def _poisoned_apply(params, tokens_BxL, valid_BxL, t_B):
  """`_toy_apply`, but all logits NaN when every unmasked token of the batch is V - 1."""
  logits = _toy_apply(params, tokens_BxL, valid_BxL, t_B)
  poisoned = jnp.all((tokens_BxL == V - 1) | (tokens_BxL == MASK))
  return logits * jnp.where(poisoned, jnp.nan, 1.0)  # NaN gradients too, when poisoned


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_skipped_step_changes_only_the_step_and_the_key(accumulate):
  optimizer = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=0.1, warmup_steps=0, total_steps=50, grad_accum_steps=accumulate))
  config = train_lib.LossConfig(mask_id=MASK, ema_decay=0.9)
  step = jax.jit(functools.partial(train_lib.train_step, apply_fn=_poisoned_apply,
                                   optimizer=optimizer, config=config, skip_nonfinite=True))
  state = train_lib.create_train_state({"table": jnp.zeros((L, V))}, optimizer,
                                       jax.random.key(0))
  clean, poisoned = next(_batches(1)), {"tokens": jnp.full((32, L), V - 1, jnp.int32)}
  state, metrics = step(state, clean)  # a real update first, so the EMA and moments differ
  assert float(metrics["skipped"]) == 0.0
  after, metrics = step(state, poisoned)
  assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  assert int(after.step) == int(state.step) + 1
  assert not np.array_equal(after.key, state.key)
  for name in ("params", "opt_state", "ema_params"):
    for a, b in zip(jax.tree.leaves(getattr(after, name)), jax.tree.leaves(getattr(state, name))):
      np.testing.assert_array_equal(a, b, err_msg=name)
  # Mutation check: without skipping, the same step poisons the parameters.
  unguarded = jax.jit(functools.partial(train_lib.train_step, apply_fn=_poisoned_apply,
                                        optimizer=optimizer, config=config))
  if accumulate == 1:
    broken, _ = unguarded(state, poisoned)
    assert not np.all(np.isfinite(broken.params["table"]))
  resumed, metrics = step(after, clean)
  assert float(metrics["skipped"]) == 0.0
  assert np.all(np.isfinite(resumed.params["table"]))


def _watch_steps(watch, finite_flags, first_step=1):
  for i, ok in enumerate(finite_flags):
    value = jnp.float32(1.0 if ok else jnp.nan)
    watch.add(first_step + i, {"loss": value, "grad_norm": jnp.float32(1.0)})


def test_the_watch_stops_at_the_first_nonfinite_step_by_default():
  watch = divergence.FiniteWatch()
  _watch_steps(watch, [True, True, False, True])
  with pytest.raises(divergence.TrainingDiverged,
                     match=r"at step 3: loss=nan.*the last checkpoint, step 2, is intact"):
    watch.check(last_saved_step=2)


def test_the_watch_tolerates_skipped_steps_until_too_many_in_a_row():
  watch = divergence.FiniteWatch(max_skipped_in_a_row=2)
  _watch_steps(watch, [True, False, False, True, False])  # runs of 2 and 1: allowed
  watch.check(last_saved_step=None)
  assert watch.skipped == 3
  _watch_steps(watch, [False], first_step=6)  # 5 and 6 in a row: still allowed
  watch.check(last_saved_step=None)
  _watch_steps(watch, [False, True], first_step=7)  # 5, 6, 7 in a row, across checks
  with pytest.raises(divergence.TrainingDiverged,
                     match=r"steps 5-7 were all non-finite.*no checkpoint was saved"):
    watch.check(last_saved_step=None)
  with pytest.raises(ValueError, match="max_skipped_in_a_row"):
    divergence.FiniteWatch(-1)


@pytest.fixture
def file_size_limit():
  """Sets this process's RLIMIT_FSIZE soft limit (Python ignores SIGXFSZ, so a write past
  it fails with EFBIG, as a full disk fails with ENOSPC); restored afterwards."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  yield lambda limit: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("async_save", [True, False])
def test_a_checkpoint_that_cannot_be_written_is_a_clear_error_and_the_last_one_survives(
    tmp_path, file_size_limit, async_save):
  # Random values do not compress: each checkpoint file is about the array's 1.6 MB.
  state = {"w": jax.random.normal(jax.random.key(0), (400, 1000))}
  manager = checkpoint.make_manager(str(tmp_path), async_save=async_save)
  checkpoint.save(manager, 1, state, {"position": 1}, "fp")
  checkpoint.wait(manager)
  file_size_limit(1 << 20)
  with pytest.raises(checkpoint.CheckpointWriteError) as raised:
    checkpoint.save(manager, 2, state, {"position": 2}, "fp")
    checkpoint.wait(manager)  # where an asynchronous save's failure is collected
  file_size_limit(resource.RLIM_INFINITY)
  message = str(raised.value)
  assert "checkpoint of step 2" in message and str(tmp_path) in message, message
  assert "File too large" in message and "step 1, is intact" in message, message
  restored, data_state = checkpoint.restore_latest(
      checkpoint.make_manager(str(tmp_path)), checkpoint.abstract(state), "fp")
  assert data_state == {"position": 1}
  np.testing.assert_array_equal(restored["w"], state["w"])
  # With room again, the same manager saves the next step.
  checkpoint.save(manager, 3, state, {"position": 3}, "fp")
  checkpoint.wait(manager)
  assert manager.latest_step() == 3


def test_a_bad_optimizer_config_fails_before_the_parameters_are_initialized(monkeypatch):
  from experiments.configs import tiny  # pylint: disable=import-outside-toplevel
  from fef_jax.train import run  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.optimizer.update(total_steps=10, warmup_steps=100)
  config.data.num_examples = 100

  def no_init(*args):
    raise AssertionError(f"initialized before checking the optimizer config: {args[0]}")

  monkeypatch.setattr(run, "init_params", no_init)
  with pytest.raises(ValueError, match="warmup_steps=100, total_steps=10"):
    run.setup(config)


def test_a_resumed_run_restores_its_state_without_initializing_one(tmp_path, monkeypatch):
  from experiments.configs import tiny  # pylint: disable=import-outside-toplevel
  from fef_jax.train import run  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.optimizer.update(total_steps=2, warmup_steps=1)
  config.update(log_every=2, eval_every=2, eval_batch_size=64, batch_size=32)
  config.checkpoint.every = 2
  config.sample.every = 0
  config.data.num_examples = 256
  config.data.num_eval_examples = 64
  first = run.train(config, str(tmp_path), progress=False)

  real_init = run.init_params

  def traced_only(model_cfg, key):  # shapes may be traced, values must not be computed
    if not isinstance(key, jax.core.Tracer):
      raise AssertionError("a resumed run initialized its parameters")
    return real_init(model_cfg, key)

  monkeypatch.setattr(run, "init_params", traced_only)
  config.optimizer.total_steps = 3
  resumed = run.train(config, str(tmp_path), progress=False)
  assert int(resumed["state"].step) == 3
  # It trained on from the saved state: the step's update moved the parameters.
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first["state"].params),
                                                    jax.tree.leaves(resumed["state"].params))]
  assert any(moved)
