"""The sampler comparison on a dependency-heavy task, CPU-sized.

PairSum with 4 pairs: the prompt holds 4 targets, the answer 4 digit pairs, each
summing to its target. A pair's two digits must agree (many valid forms), so
committing both from their marginals in one parallel step is often wrong, while
pairs are independent of each other, so an exact sampler can commit many tokens
per call.

    python -m experiments.compare --config=experiments/configs/compare.py --workdir=runs/compare

A block-causal model (`--config.model.attention=block_causal
--config.model.block_length=K`) adds the exact-cache rows (FeF over the cache, and
the exact one-token decoder over the same cache), for tasks whose sequence length is
a multiple of `K` and whose answer blocks of `K` lie inside attention blocks (a prompt
of a multiple of `K` tokens). PairSum's 5 + 8 = 13 tokens allow only `K = 13`, so
this config does not use it.
"""
import ml_collections

from experiments.configs import tiny


def get_config() -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.data = ml_collections.ConfigDict(dict(
      kind="task", task="pair_sum", task_kwargs=dict(base=10, pairs=4),
      num_examples=100_000, num_eval_examples=1024))
  config.model.update(d_model=96, num_layers=3, num_heads=4, mlp_dim=288)
  config.optimizer.total_steps = 1500
  config.sample.samplers = ()  # the comparison below replaces the post-training table
  config.sample.every = 500
  config.sample.periodic_samplers = ("fef:steps=1,window=8", "confidence:steps=1")
  # `samplers`: empty for the full grid of fef_jax.eval.compare.default_samplers.
  # `batch_sizes`: 1 is the latency regime (where speculation can pay), 256 the
  # throughput regime (where exact copy verification cannot); each gets its table.
  config.compare = ml_collections.ConfigDict(dict(
      num_prompts=1024, batch_sizes=(1, 8, 256), samplers=()))
  return config
