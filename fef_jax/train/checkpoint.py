"""Checkpoints with orbax: train state, data-iterator position and a config fingerprint.

Everything that decides the continuation of a run is saved together (parameters,
optimizer state, EMA, PRNG key, step and the data iterator's state), so a run
killed at any point resumes bit-identically from its last checkpoint. The
fingerprint (a string describing model shape, vocabulary and tokenizer) is
checked on restore, so a checkpoint of another configuration fails with a
clear error instead of a shape error deep inside XLA.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by a run with another configuration."""


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
  """Saves (asynchronously, if the manager is) the state, data position and fingerprint."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave({"data_state": data_state, "fingerprint": fingerprint})),
      metrics=metrics)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   fingerprint: str) -> Optional[tuple[Any, dict[str, Any]]]:
  """(state, data_state) of the latest checkpoint, or None when there is none.

  Raises:
    CheckpointMismatchError: the checkpoint's fingerprint differs from `fingerprint`
      (its configuration is named in the message), or its arrays do not fit
      `abstract_state`.
  """
  step = manager.latest_step()
  if step is None:
    return None
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  if meta["fingerprint"] != fingerprint:
    raise CheckpointMismatchError(
        f"checkpoint {manager.directory}/{step} was written by another configuration:\n"
        f"  checkpoint: {meta['fingerprint']}\n  this run:   {fingerprint}")
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
  except (ValueError, KeyError) as e:
    raise CheckpointMismatchError(
        f"checkpoint {manager.directory}/{step} does not fit this run's state: {e}") from e
  return restored["state"], meta["data_state"]


def abstract(state: Any) -> Any:
  """The shapes, dtypes and shardings of `state`, as orbax restore targets."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
