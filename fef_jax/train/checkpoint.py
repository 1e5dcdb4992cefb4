"""Checkpoints with orbax: train state, data-iterator position and a config fingerprint.

Everything that decides the continuation of a run is saved together (parameters,
optimizer state, EMA, PRNG key, step and the data iterator's state), so a run
killed at any point resumes bit-identically from its last checkpoint. The
fingerprint (a string describing model shape, vocabulary and tokenizer) is
checked on restore, so a checkpoint of another configuration fails with a
clear error instead of a shape error deep inside XLA.

Each checkpoint also stores a checksum of every array (its bits summed as
unsigned integers, which wrap, so the sum does not depend on the order of the
reduction or on the sharding), verified on restore: a flipped byte is caught even
where the storage format would read it back silently. A checkpoint that cannot be
read or fails its checksums is skipped with a warning naming its step and the
error, and the run resumes from the newest complete one.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by a run with another configuration."""


class CheckpointCorruptError(ValueError):
  """No checkpoint of a directory could be restored (each failure is named)."""


def _bits_sum(x: jax.Array) -> jax.Array:
  """uint32: the array's bits, as unsigned integers of its width, summed with wrap-around."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
  return jnp.sum(jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32),
                 dtype=jnp.uint32)


@jax.jit
def _checksums(state: Any) -> list[jax.Array]:
  return [_bits_sum(leaf) for leaf in jax.tree.leaves(state)]


def checksums(state: Any) -> list[int]:
  """One integer per array of `state` (in `jax.tree.leaves` order); any changed bit
  changes its array's sum."""
  return [int(c) for c in jax.device_get(_checksums(state))]


def make_manager(directory: str, *, max_to_keep: int = 3, best_metric: Optional[str] = None,
                 best_mode: str = "min", async_save: bool = True) -> ocp.CheckpointManager:
  """An orbax CheckpointManager keeping the last `max_to_keep` checkpoints
  (or the best ones by `best_metric` when given)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
      best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
      best_mode=best_mode, keep_checkpoints_without_metrics=best_metric is None)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict[str, Any],
         fingerprint: str, metrics: Optional[dict[str, float]] = None) -> None:
  """Saves (asynchronously, if the manager is) the state, data position, fingerprint and
  the state's checksums."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave({"data_state": data_state, "fingerprint": fingerprint,
                              "checksums": checksums(state)})),
      metrics=metrics)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   fingerprint: str) -> Optional[tuple[Any, dict[str, Any]]]:
  """(state, data_state) of the newest checkpoint that restores intact, or None when
  there is none.

  A checkpoint whose files cannot be read, or whose arrays fail their checksums
  (a truncated, corrupted or partly deleted checkpoint), is skipped with a
  warning naming its step and the error; the next older one is tried.

  Raises:
    CheckpointMismatchError: the newest readable checkpoint's fingerprint differs
      from `fingerprint` (its configuration is named in the message).
    CheckpointCorruptError: there are checkpoints, but none restores intact (each
      step's error is named).
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    where = os.path.join(str(manager.directory), str(step))
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      stored_fingerprint, data_state = meta["fingerprint"], meta["data_state"]
    except Exception as e:  # pylint: disable=broad-except  # any unreadable metadata
      failures.append(f"step {step} ({where}): metadata unreadable: {type(e).__name__}: {e}")
      continue
    if stored_fingerprint != fingerprint:
      raise CheckpointMismatchError(
          f"checkpoint {where} was written by another configuration:\n"
          f"  checkpoint: {stored_fingerprint}\n  this run:   {fingerprint}")
    try:
      state = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-except  # missing or truncated arrays
      failures.append(f"step {step} ({where}): arrays unreadable: {type(e).__name__}: {e}")
      continue
    expected = meta.get("checksums")
    if expected is not None:
      bad = [i for i, (a, b) in enumerate(zip(checksums(state), expected)) if a != b]
      if bad or len(expected) != len(jax.tree.leaves(state)):
        paths = [jax.tree_util.keystr(p)
                 for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
        failures.append(f"step {step} ({where}): checksums differ for "
                        f"{[paths[i] for i in bad[:5]] or 'the number of arrays'}")
        continue
    for failure in failures:
      logging.warning("skipped a damaged checkpoint, resuming from step %d: %s", step, failure)
    return state, data_state
  if failures:
    raise CheckpointCorruptError(f"no checkpoint in {manager.directory} restores intact:\n  "
                                 + "\n  ".join(failures))
  return None


def abstract(state: Any) -> Any:
  """The shapes, dtypes and shardings of `state`, as orbax restore targets."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
