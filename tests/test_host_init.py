"""Parameters are initialized on the host's CPU and placed on the default device, with the
values a plain jitted init gives."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from fef_jax import models
from fef_jax.models import host_init
from fef_jax.models import spec_head
from fef_jax.models import transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = models.TransformerConfig(vocab_size=7, mask_id=7, max_length=8, d_model=16,
                                  num_layers=2, num_heads=2, mlp_dim=32)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_on_a_cpu_default_device_it_is_the_plain_jitted_init():
  key = jax.random.key(3)
  _assert_trees_equal(models.init_params(CONFIG, key), transformer._init_params(CONFIG, key))
  head = spec_head.SpecHeadConfig(**{f: getattr(CONFIG, f) for f in (
      "vocab_size", "mask_id", "max_length", "d_model", "num_layers", "num_heads",
      "mlp_dim")}, head_layers=1)
  _assert_trees_equal(spec_head.init_params(head, key), spec_head._init_params(head, key))
  assert host_init.default_device() == jax.devices()[0]
  assert host_init.host_device().platform == "cpu"


# Run with two CPU devices and the second as the default: the init must run on the first
# (the host) and its result land on the second (standing in for an accelerator).
_TWO_DEVICES = textwrap.dedent("""
    import functools, jax, numpy as np
    from fef_jax import models
    from fef_jax.models import host_init, transformer
    host, target = jax.devices()
    jax.config.update("jax_default_device", target)
    config = models.TransformerConfig(vocab_size=7, mask_id=7, max_length=8, d_model=16,
                                      num_layers=2, num_heads=2, mlp_dim=32)
    key = jax.random.key(3)
    params = models.init_params(config, key)
    assert all(x.devices() == {target} for x in jax.tree.leaves(params))
    with jax.default_device(host):
      plain = transformer._init_params(config, key)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(plain)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ran_on = []
    def spy(k):
      out = jax.jit(lambda k: jax.random.normal(k, (3,)))(k)
      ran_on.append(out.devices())
      return out
    out = host_init.computed_on_host(spy, jax.device_put(key, target))
    assert ran_on == [{host}], ran_on
    assert out.devices() == {target}
    print("ok")
""")


def test_on_another_default_device_it_runs_on_the_host_and_lands_there():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().endswith("ok")
