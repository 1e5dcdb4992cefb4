"""Several steps per call: the plan of calls and their stacked batches."""
import ml_collections
import numpy as np
import pytest

from experiments.configs import tiny
from fef_jax.data import pipeline
from fef_jax.train import divergence
from fef_jax.train import run
from fef_jax.train import sharding
from fef_jax.train import step_chunks


def _due(step, periods, total):
  return step == total or any(p and step % p == 0 for p in periods)


@pytest.mark.parametrize("start,total,k,periods", [
    (0, 60, 4, (5, 30, 10, 0)), (0, 60, 8, (50, 1000, 20, 0)), (27, 100, 16, (25,)),
    (0, 7, 3, ()), (5, 5, 4, (2,)), (0, 1, 4, (1,)), (3, 40, 1, (7, 11))])
def test_calls_cover_every_step_once_and_never_step_over_due_work(start, total, k, periods):
  sizes = list(step_chunks.chunk_sizes(start, total, k, periods))
  assert sum(sizes) == total - start
  assert set(sizes) <= {1, k}
  step = start
  for size in sizes:
    # Nothing is due strictly inside a call ...
    assert not any(_due(s, periods, total) for s in range(step + 1, step + size)), (step, size)
    # ... and a one-step call is taken only where a K-step call would step over due work.
    if size == 1 and k > 1:
      assert any(_due(s, periods, total) for s in range(step + 1, step + k)), step
    step += size


def test_a_steps_per_call_that_misses_a_period_is_named_in_a_warning():
  assert step_chunks.misfit_warning(10, (50, 200, 0, 400)) is None
  assert step_chunks.misfit_warning(1, (7, 3)) is None
  warning = step_chunks.misfit_warning(8, (50, 200, 0, 400))
  assert warning and "steps_per_call=8" in warning and "[50]" in warning


def test_bad_steps_per_call_and_periods_are_refused():
  for k in (0, -1, 2.0, True, "4"):
    with pytest.raises(ValueError, match="steps_per_call"):
      next(step_chunks.chunk_sizes(0, 10, k, ()))
    with pytest.raises(ValueError, match="steps_per_call"):
      run.steps_per_call(ml_collections.ConfigDict({"steps_per_call": k}))
  assert run.steps_per_call(ml_collections.ConfigDict()) == 1
  with pytest.raises(ValueError, match="periods"):
    next(step_chunks.chunk_sizes(0, 10, 2, (-5,)))


def test_stacked_batches_are_the_plain_iterators_batches_in_order():
  arrays = {"tokens": np.arange(40 * 3).reshape(40, 3), "weights": np.arange(40.0)}
  plain = pipeline.BatchIterator(arrays, 4, seed=1)
  grouped = pipeline.BatchIterator(arrays, 4, seed=1)
  sizes = [3, 1, 3, 3, 1]
  calls = list(step_chunks.stacked(grouped, sizes))
  expected = [next(plain) for _ in range(sum(sizes))]
  assert [call["tokens"].shape for call in calls] == [(s, 4, 3) for s in sizes]
  for name in arrays:
    flat = np.concatenate([call[name] for call in calls])
    np.testing.assert_array_equal(flat, np.stack([batch[name] for batch in expected]))
  # The iterator's position after a call is that of the plain iterator after as many batches.
  assert grouped.state() == plain.state()


def test_stacked_step_metrics_name_the_first_non_finite_step():
  watch = divergence.FiniteWatch()
  watch.add(4, {"loss": np.array([1.0, 2.0, 3.0, 4.0]), "grad_norm": np.ones(4)})
  watch.add(5, {"loss": np.float32(1.0), "grad_norm": np.float32(1.0)})
  watch.add(9, {"loss": np.array([1.0, 1.0, np.nan, 1.0]), "grad_norm": np.ones(4)})
  with pytest.raises(divergence.TrainingDiverged, match="at step 8:"):
    watch.check(last_saved_step=5)


def test_the_training_loop_is_fed_calls_of_the_planned_sizes():
  config = tiny.get_config()
  config.update(steps_per_call=4, log_every=5, eval_every=10, batch_size=8)
  config.optimizer.total_steps = 12
  config.checkpoint.every = 10
  config.sample.every = 0
  arrays = {"tokens": np.arange(64 * 11, dtype=np.int32).reshape(64, 11)}
  mesh = sharding.make_mesh(-1, 1, 1)
  plain = pipeline.BatchIterator(arrays, 8, seed=0)
  with run.step_batches(config, pipeline.BatchIterator(arrays, 8, seed=0), 0, mesh) as calls:
    fed = [next(calls)[0]["tokens"] for _ in range(6)]
  assert [call.shape for call in fed] == [(size, 8, 11) for size in (4, 1, 4, 1, 1, 1)]
  np.testing.assert_array_equal(np.concatenate(fed),
                                np.stack([next(plain)["tokens"] for _ in range(12)]))
  config.steps_per_call = 1  # one unstacked batch per call
  with run.step_batches(config, pipeline.BatchIterator(arrays, 8, seed=0), 0, mesh) as calls:
    assert next(calls)[0]["tokens"].shape == (8, 11)
