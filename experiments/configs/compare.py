"""The sampler comparison on a dependency-heavy task, CPU-sized.

PairSum with 5 pairs: the prompt holds 5 targets (and SEP: 6 tokens), the answer 5
digit pairs (10 tokens), each summing to its target. A pair's two digits must agree
(many valid forms), so committing both from their marginals in one parallel step is
often wrong, while pairs are independent of each other, so an exact sampler can
commit many tokens per call.

    python -m experiments.compare --config=experiments/configs/compare.py --workdir=runs/compare

Two models of the same backbone size and training steps (`compare.models`, see
`fef_jax.eval.compare.training_config`), each trained in `<workdir>/<model>`:
`bidirectional` (the full grid of `compare.default_samplers`, with the approximate
cache) and `block_causal_head`: attention blocks of `compare.block_length = K = 2`
positions and a jointly trained speculative head of `compare.head_layers` layers,
sampled over the exact cache with marginal and head drafts
(`compare.cached_samplers`). The exact cache needs every answer block of `K` inside
one attention block, so prompt and answer lengths must be multiples of `K`: PairSum's
6 + 10 = 16 tokens make the prompt 3 blocks and each answer pair one block (with 4
pairs, 5 + 8 = 13 tokens, only `K = 13` would fit).
"""
import ml_collections

from experiments.configs import tiny


def get_config() -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.data = ml_collections.ConfigDict(dict(
      kind="task", task="pair_sum", task_kwargs=dict(base=10, pairs=5),
      num_examples=100_000, num_eval_examples=1024))
  config.model.update(d_model=96, num_layers=3, num_heads=4, mlp_dim=288)
  config.optimizer.total_steps = 1500
  config.sample.samplers = ()  # the comparison below replaces the post-training table
  config.sample.every = 500
  config.sample.periodic_samplers = ("fef:steps=1,window=8", "confidence:steps=1")
  # `models`: any of fef_jax.eval.compare.MODELS, e.g. "('bidirectional',)" for one.
  # `block_length`, `head_layers`: the block_causal_head model's attention blocks (and
  # its cached samplers' blocks) and speculative head.
  # `samplers`: the bidirectional model's specs, empty for the full grid of
  # fef_jax.eval.compare.default_samplers; `cached_samplers`: the block_causal_head
  # model's, empty for fef_jax.eval.compare.cached_samplers.
  # `batch_sizes`: 1 is the latency regime (where speculation can pay), 256 the
  # throughput regime (where exact copy verification cannot); each gets its table.
  # `parts`: the samplers take turns over this many parts of the prompts, so that a
  # slow spell of a shared machine slows every sampler alike (see
  # fef_jax.eval.compare.compare).
  config.compare = ml_collections.ConfigDict(dict(
      models=("bidirectional", "block_causal_head"), block_length=2, head_layers=1,
      num_prompts=1024, batch_sizes=(1, 8, 256), samplers=(), cached_samplers=(), parts=8))
  return config
