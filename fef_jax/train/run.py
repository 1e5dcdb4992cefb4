"""The training loop behind `python -m experiments.train`, importable from notebooks.

Builds data, model, optimizer and state from a config; resumes from the latest
checkpoint in `workdir` (bit-identically: the state, PRNG key and data position
are all restored); trains with a progress bar showing loss, tokens/s and (on
known accelerators) MFU; logs metrics to JSON lines and TensorBoard; evaluates,
draws periodic samples with FeF and a baseline, and checkpoints periodically,
keeping the latest checkpoints (to resume) and the best one by a metric.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from fef_jax.data import pipeline
from fef_jax.models import host_init
from fef_jax.models import spec_head
from fef_jax.models import transformer
from fef_jax.train import checkpoint
from fef_jax.train import compile_ahead
from fef_jax.train import data_source
from fef_jax.train import divergence
from fef_jax.train import memory
from fef_jax.train import metric_writer
from fef_jax.train import mfu
from fef_jax.train import optim
from fef_jax.train import periodic_samples
from fef_jax.train import phases as phases_lib
from fef_jax.train import prefetch
from fef_jax.train import preemption
from fef_jax.train import sharding
from fef_jax.train import step_chunks
from fef_jax.train import step as train_lib


_COMPUTE_DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}


def model_config(config: ml_collections.ConfigDict, source: data_source.DataSource,
                 length: int) -> transformer.TransformerConfig:
  """The transformer config for this data (vocabulary and mask id come from the data);
  a `SpecHeadConfig` when `config.model.head_layers` is set and positive."""
  fields = dict(config.model)
  if "remat" in fields:
    fields["remat"] = remat_option(fields["remat"])
  if "dtype" in fields:
    fields["dtype"] = compute_dtype(fields["dtype"])
  head_layers = fields.pop("head_layers", 0)
  if head_layers:
    return spec_head.SpecHeadConfig(vocab_size=source.vocab_size, mask_id=source.mask_id,
                                    max_length=length, head_layers=head_layers, **fields)
  return transformer.TransformerConfig(vocab_size=source.vocab_size, mask_id=source.mask_id,
                                       max_length=length, **fields)


def remat_option(value: bool | str) -> bool | str:
  """`config.model.remat` as `TransformerConfig.remat` takes it.

  The configs hold a string, so that any policy of `transformer.REMAT_POLICIES` can be
  given on the command line (`--config.model.remat=dots_saveable`; a bool field would
  take only true or false). `"none"` and `"full"`, and the command line's spellings of
  a bool (`"false"`, `"true"`, any case), become False and True, so model configs print
  as they did when the configs held bools. Other values pass through
  (`TransformerConfig` rejects what is not a policy).
  """
  if isinstance(value, str):
    return {"none": False, "false": False, "full": True, "true": True}.get(value.lower(),
                                                                          value)
  return value


def compute_dtype(value: Any) -> Any:
  """`config.model.dtype` as `TransformerConfig.dtype` takes it: a name (what the configs
  hold, so that `--config.model.dtype=bfloat16` parses) becomes JAX's scalar type of that
  name, e.g. `jnp.bfloat16`, so model configs print as they did when the configs held
  those types; anything else passes through (`TransformerConfig` rejects what is not
  floating).

  Raises:
    ValueError: a name other than bfloat16, float16 or float32.
  """
  if not isinstance(value, str):
    return value
  if value not in _COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype must be one of {tuple(_COMPUTE_DTYPES)}, "
                     f"got {value!r}")
  return _COMPUTE_DTYPES[value]


def build_model(model_cfg: transformer.TransformerConfig):
  """The Flax model of `model_cfg`: a `SpecHeadTransformer` for a head config."""
  if isinstance(model_cfg, spec_head.SpecHeadConfig):
    return spec_head.SpecHeadTransformer(model_cfg)
  return transformer.Transformer(model_cfg)


def init_params(model_cfg: transformer.TransformerConfig, key: jax.Array) -> Any:
  """Fresh parameters of `build_model(model_cfg)`."""
  if isinstance(model_cfg, spec_head.SpecHeadConfig):
    return spec_head.init_params(model_cfg, key)
  return transformer.init_params(model_cfg, key)


def fresh_state(config: ml_collections.ConfigDict, model_cfg: transformer.TransformerConfig,
                optimizer: optax.GradientTransformation) -> train_lib.TrainState:
  """The state a run of `config` starts from: fresh parameters, optimizer state and keys."""
  init_key, state_key = jax.random.split(jax.random.key(config.seed))
  return train_lib.create_train_state(init_params(model_cfg, init_key), optimizer, state_key)


# Model fields that choose how a step computes, not what it computes: the parameters and
# optimizer state do not depend on them, so a run may resume with other values (e.g.
# rematerialize to fit a smaller device). Matched in a config's repr, as fingerprints hold it.
_EXECUTION_OPTION = re.compile(r", (?:remat|dtype|attention_impl)=(?:<[^>]*>|'[^']*'|[^,)]*)")


def canonical_fingerprint(text: str) -> str:
  """A fingerprint (as `fingerprint` makes it, or as any earlier run stored it) without the
  model's execution options `remat`, `dtype` and `attention_impl`."""
  return _EXECUTION_OPTION.sub("", text)


def fingerprint(source: data_source.DataSource, model: transformer.TransformerConfig) -> str:
  """What a checkpoint must agree on to be resumed: the model's shape and the data's
  vocabulary, not its execution options (`canonical_fingerprint`)."""
  return canonical_fingerprint(f"model={model!r};data={source.fingerprint}")


def setup(config: ml_collections.ConfigDict, tokenizer_dir: str | None = None,
          timed: phases_lib.Phases | None = None, *, abstract: bool = False):
  """Data, model, optimizer, loss config and a fresh state, all from `config`
  (text data saves / reuses its tokenizer in `tokenizer_dir`); `timed` records the
  seconds of the phases "data" and "init".

  With `abstract`, the state is only its shapes and dtypes (`jax.ShapeDtypeStruct`
  leaves, nothing initialized): what a restore needs, which then skips the init (for
  the 85M GPU config, 5.4 s on the 2-core CPU with the init uncompiled, 1.8 s cached).
  """
  timed = timed or phases_lib.Phases()
  with timed("data"):
    source = data_source.build(config.data, config.seed, tokenizer_dir)
  length = source.arrays["tokens"].shape[1]
  model_cfg = model_config(config, source, length)
  loss_cfg = train_lib.LossConfig(mask_id=source.mask_id, **dict(config.loss))
  if loss_cfg.head_weight and not isinstance(model_cfg, spec_head.SpecHeadConfig):
    raise ValueError(f"config.loss.head_weight={loss_cfg.head_weight} trains a speculative "
                     f"head: set config.model.head_layers >= 1")
  # Before the init, so that a bad optimizer config fails at once.
  optimizer = optim.make_optimizer(optim.OptimizerConfig(**dict(config.optimizer)))
  init = functools.partial(fresh_state, config, model_cfg, optimizer)
  with timed("init"):
    state = jax.eval_shape(init) if abstract else init()
  return source, build_model(model_cfg), optimizer, loss_cfg, state


def steps_per_call(config: ml_collections.ConfigDict) -> int:
  """`config.steps_per_call` (default 1): training steps per jitted call.

  Raises:
    ValueError: not an int >= 1.
  """
  return step_chunks.checked(config.get("steps_per_call", 1))


def make_step_fn(config: ml_collections.ConfigDict, model, optimizer, loss_cfg, shardings,
                 mesh):
  """The jitted training call of a run: state donated, outputs placed as `shardings`
  (the state's) and replicated (the metrics); skips non-finite steps when
  `config.skip_nonfinite_steps > 0`.

  With `steps_per_call(config) == 1` it is `train_step` on one batch; with `K > 1`,
  `train_steps` on stacked batches `[k, B, ...]` (`k` = K, or 1 where
  `step_chunks.chunk_sizes` says), metrics stacked `[k]`.

  Raises:
    ValueError: a bad `config.steps_per_call`.
  """
  step = train_lib.train_steps if steps_per_call(config) > 1 else train_lib.train_step
  return jax.jit(functools.partial(step, apply_fn=train_lib.make_apply_fn(model),
                                   optimizer=optimizer, config=loss_cfg,
                                   skip_nonfinite=config.get("skip_nonfinite_steps", 0) > 0),
                 out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
                 donate_argnums=0)


def _loop_periods(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The periods of the loop's work between steps: logs, evaluations, checkpoints, samples."""
  return (config.log_every, config.eval_every, config.checkpoint.every,
          config.sample.get("every", 0))


def step_batches(config: ml_collections.ConfigDict, iterator: pipeline.BatchIterator,
                 start: int, mesh) -> prefetch.Prefetcher:
  """The placed batches of each call of `make_step_fn`'s function from step `start`,
  prefetched `config.prefetch_batches` calls ahead, each with the data position after it.

  With `steps_per_call(config) = K > 1` a call's batches are stacked, `K` of them
  or one (`step_chunks.chunk_sizes`: a call ends where the loop logs, evaluates,
  samples or checkpoints, and at the last step).
  """
  k = steps_per_call(config)
  calls = iterator
  if k > 1:
    calls = step_chunks.stacked(iterator, step_chunks.chunk_sizes(
        start, config.optimizer.total_steps, k, _loop_periods(config)))
  return prefetch.Prefetcher(calls, iterator.state,
                             functools.partial(sharding.shard_batch, mesh=mesh, stacked=k > 1),
                             size=config.get("prefetch_batches", 2))


def call_batch_shapes(config: ml_collections.ConfigDict, arrays: dict[str, Any],
                      mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes, dtypes and shardings of the batches of one full call of the step
  (`[K, B, ...]` stacked for `K = steps_per_call(config) > 1`, else `[B, ...]`), for
  training `arrays` (name -> anything with a shape `[N, ...]` and a dtype, e.g. a
  `DataSource`'s arrays)."""
  k = steps_per_call(config)
  lead = (k, config.batch_size) if k > 1 else (config.batch_size,)
  placed = sharding.batch_sharding(mesh, k > 1)
  return {name: jax.ShapeDtypeStruct(lead + tuple(array.shape[1:]),
                                     jax.dtypes.canonicalize_dtype(array.dtype), sharding=placed)
          for name, array in arrays.items()}


def restore_trained(config: ml_collections.ConfigDict, workdir: str, *, best: bool = False
                    ) -> dict[str, Any]:
  """The model of a finished (or interrupted) run in `workdir`, for sampling.

  Args:
    config: the run's config (it decides the model shape and data).
    workdir: the run's directory.
    best: restore `workdir/best` (the best checkpoint by the config's
      `checkpoint.best_metric`) instead of the latest.

  Returns:
    {"state": the restored TrainState, "source": the DataSource (with the
     run's saved tokenizer for text data), "model": the Transformer}.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    checkpoint.CheckpointMismatchError: the checkpoint is of another config.
  """
  source, model, _, _, state = setup(config, os.path.join(workdir, "tokenizer"), abstract=True)
  directory = os.path.join(workdir, "best" if best else "checkpoints")
  manager = checkpoint.make_manager(directory, async_save=False)
  device = jax.sharding.SingleDeviceSharding(host_init.default_device())
  restored = checkpoint.restore_latest(
      manager, checkpoint.abstract(state, jax.tree.map(lambda _: device, state)),
      fingerprint(source, model.config), canonical=canonical_fingerprint)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {directory}: train first "
                            f"(python -m experiments.train --workdir={workdir})")
  return {"state": restored[0], "source": source, "model": model}


def train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
          timed: phases_lib.Phases | None = None) -> dict[str, Any]:
  """Trains (or resumes) until `config.optimizer.total_steps`.

  The startup phases until the first step has run ("data", "init", "restore",
  "place", "writer", "compile+first step") are timed into `timed` (if given) and, with
  `progress`, printed once above the progress bar. "init" is the state's shapes, and
  on a fresh run its values; the train step compiles from the shapes on a thread
  meanwhile (`compile_ahead`), so "compile+first step" is what is left of it.

  Returns:
    {"state": the final TrainState, "metrics": the last logged metrics,
     "source": the DataSource, "model": the Transformer}.

  Writes `workdir/metrics.jsonl` (one JSON object per logged step),
  `workdir/tensorboard/` (the same scalars, and sample texts),
  `workdir/samples.jsonl` (periodic text samples), `workdir/tokenizer/` (text
  data), the latest checkpoints in `workdir/checkpoints` and, when
  `config.checkpoint.best_metric` is set, the best evaluated one in
  `workdir/best`.

  SIGTERM (preemption) makes it save a checkpoint at the current step and
  raise `preemption.Preempted`; rerunning resumes from there exactly.

  Raises:
    checkpoint.CheckpointMismatchError: `workdir` holds a checkpoint of another
      configuration (model shape or vocabulary).
    checkpoint.CheckpointCorruptError: `workdir` holds checkpoints, none intact
      (a damaged newest one is skipped for the previous one, with a warning).
    divergence.TrainingDiverged: a step's loss or gradient norm is not finite
      (named; no later checkpoint is written, earlier ones stay). With
      `config.skip_nonfinite_steps = N > 0` such steps are skipped instead
      (no update; counted in the metric `skipped_steps`) and the run stops
      only after more than `N` of them in a row.
    preemption.Preempted: SIGTERM arrived; the checkpoint of its step is saved.
    checkpoint.CheckpointWriteError: a checkpoint could not be written (e.g. the
      disk is full); the ones before it are intact and a rerun resumes from them.
  """
  from tqdm.auto import tqdm
  metric_writer.import_in_background()
  os.makedirs(workdir, exist_ok=True)
  sharding.initialize_distributed()
  timed = timed if timed is not None else phases_lib.Phases()
  # The state's shapes first: the train step compiles from them on a thread while the
  # state is restored, or initialized and placed (a resumed run never initializes one).
  source, model, optimizer, loss_cfg, state = setup(config, os.path.join(workdir, "tokenizer"),
                                                    timed, abstract=True)
  apply_fn = train_lib.make_apply_fn(model)
  iterator = pipeline.BatchIterator(source.arrays, config.batch_size, config.seed)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
  best_metric = config.checkpoint.get("best_metric")
  best_manager = (checkpoint.make_manager(os.path.join(workdir, "best"), max_to_keep=1,
                                          best_metric=best_metric,
                                          best_mode=config.checkpoint.get("best_mode", "min"))
                  if best_metric else None)
  run_fingerprint = fingerprint(source, model.config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  sample_every = config.sample.get("every", 0)
  prompts = (periodic_samples.held_out_prompts(source, config.sample, config.seed)
             if sample_every else None)
  shardings = sharding.state_shardings(state, mesh)
  step_fn = make_step_fn(config, model, optimizer, loss_cfg, shardings, mesh)
  placed_shapes = checkpoint.abstract(state, shardings)
  # One process only: on several, each host's batch is a slice of the global one.
  ahead = (compile_ahead.CompileAhead(step_fn, placed_shapes,
                                      call_batch_shapes(config, source.arrays, mesh))
           if jax.process_count() == 1 else None)
  with timed("restore"):
    restored = checkpoint.restore_latest(manager, placed_shapes, run_fingerprint,
                                         canonical=canonical_fingerprint)
  if restored is not None:
    state, data_state = restored
    iterator.restore(data_state)
  else:
    with timed("init"):
      state = fresh_state(config, model.config, optimizer)
    with timed("place"):
      state = jax.block_until_ready(jax.device_put(state, shardings))
  estimate = memory.estimate(  # before the first step, which is where a model too large fails
      model.config, config.batch_size, source.arrays["tokens"].shape[1], state,
      mesh.shape["data"] * mesh.shape["fsdp"], config.loss.get("logits_chunk", 0))
  if progress:
    tqdm.write(memory.format_estimate(estimate))
  for warning in (memory.fit_warning(estimate, memory.device_limit_bytes()),
                  step_chunks.misfit_warning(steps_per_call(config), _loop_periods(config))):
    if warning:
      logging.warning("%s", warning)
  max_skipped = config.get("skip_nonfinite_steps", 0)
  finite = divergence.FiniteWatch(max_skipped)
  stacked = steps_per_call(config) > 1
  eval_fn = jax.jit(functools.partial(train_lib.eval_step, apply_fn=apply_fn, config=loss_cfg))
  eval_batch = sharding.shard_batch(
      {k: v[:config.eval_batch_size] for k, v in source.eval_arrays.items()}, mesh)
  total = config.optimizer.total_steps
  tokens_per_step = config.batch_size * source.arrays["tokens"].shape[1]
  flops_per_token = transformer.flops_per_token(model.config, source.arrays["tokens"].shape[1])
  metrics: dict[str, Any] = {}
  bar = tqdm(total=total, initial=int(state.step), disable=not progress, desc="train")
  with timed("writer"):
    writer = metric_writer.MetricWriter(workdir)
  last_saved = manager.latest_step()
  # The step is counted on the host: reading `state.step` would wait for the device
  # after every step, and the next step could not be queued behind the running one.
  step = int(state.step)
  batches = step_batches(config, iterator, step, mesh)
  with preemption.PreemptionWatch() as watch, batches:
    try:
      last_time = time.perf_counter()
      started = False
      while step < total:
        batch, data_state = next(batches)
        if started:
          state, step_metrics = step_fn(state, batch)
        else:
          with timed("compile+first step"):  # what is left of the compile begun above
            if ahead is not None:
              ahead.wait()
            state, step_metrics = jax.block_until_ready(step_fn(state, batch))
          started = True
          if progress:
            bar.write(f"startup: {timed.summary()}")
        steps_done = batch["tokens"].shape[0] if stacked else 1
        step += steps_done
        finite.add(step, step_metrics)
        bar.update(steps_done)
        if step % config.log_every == 0 or step == total:
          finite.check(last_saved)
          now = time.perf_counter()
          elapsed, last_time = now - last_time, now
          metrics = {k: float(v[-1] if stacked else v) for k, v in step_metrics.items()}
          if max_skipped:
            metrics["skipped_steps"] = finite.skipped
          metrics.update(step=step,
                         tokens_per_second=tokens_per_step * config.log_every / elapsed)
          metrics.update(mfu.utilization(flops_per_token, metrics["tokens_per_second"]))
          evaluated = step % config.eval_every == 0 or step == total
          if evaluated:
            eval_metrics = eval_fn(state.ema_params, eval_batch, jax.random.key(config.seed))
            metrics.update({f"eval_{k}": float(v) for k, v in eval_metrics.items()})
          if sample_every and (step % sample_every == 0 or step == total):
            sample_metrics, texts = periodic_samples.draw(
                model, state.ema_params, source, prompts, config.sample,
                jax.random.key(config.seed + 4))
            metrics.update(sample_metrics)
            for spec, spec_texts in texts.items():
              writer.texts(step, f"samples/{spec}", spec_texts)
          writer.scalars(step, metrics)
          if best_manager is not None and evaluated:
            if best_metric not in metrics:
              raise ValueError(f"checkpoint.best_metric={best_metric!r} is not an evaluated "
                               f"metric; choose one of {sorted(metrics)}")
            checkpoint.save(best_manager, step, state, data_state, run_fingerprint,
                            metrics={best_metric: metrics[best_metric]})
          bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                          tok_s=f"{metrics['tokens_per_second']:.0f}",
                          **({"mfu": f"{metrics['mfu']:.1%}"} if "mfu" in metrics else {}))
        preempted = watch.signum is not None
        if step % config.checkpoint.every == 0 or step == total or preempted:
          finite.check(last_saved)
          checkpoint.save(manager, step, state, data_state, run_fingerprint)
          last_saved = step
        if preempted:
          checkpoint.wait(manager)
          raise preemption.Preempted(step, watch.signum)
    finally:
      writer.close()
      bar.close()
      # Earlier checkpoints complete even on an error, which a failed save must not replace.
      checkpoint.wait_all([manager, best_manager], raise_errors=sys.exc_info()[1] is None)
  return {"state": state, "metrics": metrics, "source": source, "model": model}
