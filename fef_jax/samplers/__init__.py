"""Samplers: one module per method, one signature (`fef_jax.sample`), one result type."""
from fef_jax.samplers import ancestral
from fef_jax.samplers import confidence
from fef_jax.samplers import eb
from fef_jax.samplers import fef
from fef_jax.samplers import first_hitting
from fef_jax.samplers import random_sizes
from fef_jax.samplers import threshold
from fef_jax.samplers.config import METHODS, SamplerConfig, make_config

PLANS = {
    "ancestral": ancestral.plan,
    "confidence": confidence.plan,
    "threshold": threshold.plan,
    "eb": eb.plan,
    "first_hitting": first_hitting.plan,
    "random_sizes": random_sizes.plan,
    "fef": fef.plan,
}
assert set(PLANS) == set(METHODS)

__all__ = ["METHODS", "PLANS", "SamplerConfig", "make_config"]
