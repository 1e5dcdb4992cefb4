"""Compiling ahead on a thread: the jit's first real call then compiles nothing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from fef_jax.train import compile_ahead
from tests import roundoff


@pytest.fixture
def compiles():
  """The names of the backend compilations JAX reports while the test runs."""
  seen = []

  def listen(name, seconds, **kwargs):
    del seconds, kwargs
    if name.endswith("backend_compile_duration"):
      seen.append(name)

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield seen
  jax.monitoring.unregister_event_duration_listener(listen)


def test_the_first_call_after_compiling_ahead_compiles_nothing(compiles):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  placed = NamedSharding(mesh, PartitionSpec())
  x = jax.device_put(np.arange(12.0, dtype=np.float32).reshape(3, 4), placed)
  step = jax.jit(lambda a: jnp.tanh(a) @ a.T + 1.0)
  ahead = compile_ahead.CompileAhead(step, jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                sharding=placed))
  assert ahead.wait() is None
  assert compiles, "the ahead compile was not reported"
  compiles.clear()
  # XLA's float32 against numpy's: with x >= 0 every term is non-negative, so each side
  # is within gamma(TRANSCENDENTAL + 5) relative of exact (tanh, the product, the sum of
  # 4 terms, the + 1).
  np.testing.assert_allclose(step(x), np.tanh(np.asarray(x)) @ np.asarray(x).T + 1.0,
                             rtol=2 * roundoff.gamma(roundoff.TRANSCENDENTAL + 5), atol=0)
  assert not compiles
  # Another shape is not covered: it compiles (the listener sees compiles at all).
  step(jax.device_put(np.ones((2, 4), np.float32), placed))
  assert compiles


def test_a_compile_that_fails_ahead_is_returned_and_the_real_call_raises_it():
  step = jax.jit(lambda a: a @ a)  # [3, 4] @ [3, 4] does not contract
  ahead = compile_ahead.CompileAhead(step, jax.ShapeDtypeStruct((3, 4), jnp.float32))
  assert isinstance(ahead.wait(), TypeError)
  with pytest.raises(TypeError):
    step(jnp.ones((3, 4)))
