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

A checkpoint that cannot be written (disk full, file-size limit, permissions)
raises `CheckpointWriteError` naming the step, the directory and the reason;
orbax writes into a temporary directory and renames it only when complete, so
the checkpoints before it stay intact and resumable.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by a run with another configuration."""


class CheckpointCorruptError(ValueError):
  """No checkpoint of a directory could be restored (each failure is named)."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. the disk is full); earlier ones are intact."""


def _is_write_failure(error: Exception) -> bool:
  # orbax/tensorstore report failed writes as ValueErrors carrying the OS error code.
  return isinstance(error, OSError) or "os_error_code" in str(error)


def _write_error(manager: ocp.CheckpointManager, step: Optional[int], error: Exception
                 ) -> CheckpointWriteError:
  """The clear error for a failed write. An asynchronous save fails when the next
  save or wait collects it, so the step is read from the temporary directory the
  error names when it names one."""
  directory = str(manager.directory)
  named = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(error))
  failed_step = int(named.group(1)) if named else step
  which = "the last checkpoint" if failed_step is None else f"the checkpoint of step {failed_step}"
  reason = re.search(r"Failed to write [^\[]*|No space left on device|File too large",
                     str(error))
  # From the disk: after a failed save, the manager's own list may already have dropped
  # the checkpoint the new one was to replace.
  complete = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(
      directory) else []
  latest = max(complete, default=None)
  kept = (f"the newest complete checkpoint, step {latest}, is intact and a rerun resumes "
          f"from it" if latest is not None else "no earlier checkpoint exists")
  free_mib = shutil.disk_usage(directory).free / 2**20 if os.path.isdir(directory) else 0.0
  return CheckpointWriteError(
      f"could not write {which} to {directory}: "
      f"{reason.group(0).strip() if reason else type(error).__name__}; {kept}. "
      f"{free_mib:.0f} MiB are free there: free disk space (or raise the file-size limit) "
      f"and rerun")


def _translating_write_errors(manager: ocp.CheckpointManager, step: Optional[int],
                              write: Callable[[], Any]) -> Any:
  try:
    return write()
  except Exception as e:  # pylint: disable=broad-except  # re-raised unless a failed write
    if _is_write_failure(e):
      raise _write_error(manager, step, e) from e
    raise


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
  the state's checksums.

  Raises:
    CheckpointWriteError: this save, or the asynchronous one before it, could not
      be written (named with its step and reason); earlier checkpoints are intact.
  """
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave({"data_state": data_state, "fingerprint": fingerprint,
                              "checksums": checksums(state)}))
  _translating_write_errors(manager, step,
                            lambda: manager.save(step, args=args, metrics=metrics))


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits until the manager's asynchronous save (if any) is complete.

  Raises:
    CheckpointWriteError: that save could not be written; earlier checkpoints are intact.
  """
  _translating_write_errors(manager, None, manager.wait_until_finished)


def wait_all(managers: list[Optional[ocp.CheckpointManager]], *, raise_errors: bool = True
             ) -> None:
  """Waits for the saves of every manager (None entries are skipped), all of them
  even when one fails, so that no save is still writing when the process exits.

  Args:
    managers: the managers to wait for.
    raise_errors: raise the first failure after all have finished; False logs
      each as a warning instead (for a run already stopping with another error).

  Raises:
    CheckpointWriteError: (with `raise_errors`) a save could not be written.
  """
  failures = []
  for manager in managers:
    if manager is None:
      continue
    try:
      wait(manager)
    except CheckpointWriteError as e:
      failures.append(e)
  if failures and raise_errors:
    raise failures[0]
  for failure in failures:
    logging.warning("%s", failure)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, fingerprint: str,
                   canonical: Optional[Callable[[str], str]] = None
                   ) -> Optional[tuple[Any, dict[str, Any]]]:
  """(state, data_state) of the newest checkpoint that restores intact, or None when
  there is none.

  The checkpoint's stored fingerprint, mapped by `canonical` if given (e.g. leaving out
  what a resumed run may change, in checkpoints written before that was left out), must
  equal `fingerprint`.

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
      if canonical is not None:
        stored_fingerprint = canonical(stored_fingerprint)
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


def abstract(state: Any, shardings: Any = None) -> Any:
  """The shapes, dtypes and shardings of `state` (arrays), as orbax restore targets; or,
  given `shardings` (a matching tree of them), of `state`'s leaves (anything with a shape
  and dtype, e.g. `jax.eval_shape`'s output) placed by them."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
