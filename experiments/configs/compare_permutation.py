"""The sampler comparison on Permutation: a dependence that no fixed schedule splits.

The prompt is a sorted set of 8 of 12 symbols; a valid answer is any ordering of them,
so every answer position depends on every other (each symbol is used once). On PairSum
the dependence lies inside adjacent pairs, and the dilated unmasking schedule
(`select="dilated"`, far-apart positions together) splits it: parallel decoding in that
order is as accurate as exact sampling there (BENCHMARKS.md, "The dilated order"). Here
no schedule can split it, so this comparison shows exact FeF against every parallel
decoder, dependence-aware or not, at batch 1.

    python -m experiments.compare --config=experiments/configs/compare_permutation.py \
        --workdir=runs/compare_permutation

Only the bidirectional model: the block-causal one needs attention blocks that divide
both the prompt (8 symbols and SEP) and the answer (8), which only blocks of 1 do.
"""
import ml_collections

from experiments.configs import compare


def get_config() -> ml_collections.ConfigDict:
  config = compare.get_config()
  config.data = ml_collections.ConfigDict(dict(
      kind="task", task="permutation", task_kwargs=dict(alphabet_size=12, length=8),
      num_examples=100_000, num_eval_examples=1024))
  config.compare.models = ("bidirectional",)
  config.compare.num_prompts = 512
  config.compare.batch_sizes = (1,)
  return config
