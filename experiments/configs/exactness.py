"""Default config of `python -m experiments.exactness` (a few minutes on one CPU core)."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_samples = 20_000
  config.oracles = ("phrases", "random_table", "sticky_chain", "hmm")
  # "method:option=value,..." (see fef_jax.sample); one row per oracle and spec.
  config.samplers = (
      "ancestral:steps=1", "ancestral:steps=4", "ancestral:steps=16",
      "confidence:steps=1", "confidence:steps=4", "confidence:steps=16",
      "confidence:steps=4,select=dilated",
      "random_sizes:steps=4",
      "threshold:threshold=0.5", "threshold:threshold=0.9",
      "eb:gamma=0.1", "eb:gamma=1.0",
      "first_hitting",
      "fef:steps=1,window=4", "fef:steps=1,window=16",
      "fef:steps=1,window=16,order=random",
      "fef:steps=1,window=4,order=dilated", "fef:steps=1,window=16,order=dilated",
      "fef:steps=4,window=8",
      "fef:mode=joint_then_remask,steps=2,window=16",
  )
  return config
