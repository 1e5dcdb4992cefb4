"""fef-jax: masked diffusion language models sampled without factorization error.

    import fef_jax as fj
    result = fj.sample(logits_fn, tokens_BxL, key, method="fef", mask_id=...)
"""
from fef_jax import forward
from fef_jax import losses
from fef_jax import oracles
from fef_jax import posterior
from fef_jax import schedules
from fef_jax import speculative
from fef_jax import stats
from fef_jax.api import sample
from fef_jax.samplers.config import METHODS, SamplerConfig
from fef_jax.types import SampleResult, SampleStats

__all__ = ["sample", "METHODS", "SamplerConfig", "SampleResult", "SampleStats",
           "forward", "losses", "oracles", "posterior", "schedules", "speculative",
           "stats"]
__version__ = "0.1.0"
