"""The comparison with attention blocks of 4: six PairSum pairs after one PAD.

    python -m experiments.compare --config=experiments/configs/compare_blocks4.py \
        --workdir=runs/compare_blocks4 "--config.compare.models=('block_causal_head',)"

The default comparison's 6-token prompt and 10-token answer allow blocks of at most 2,
so a round of the exact cache verifies at most 2 drafts. Here the prompt is PAD, 6
targets, SEP (8 tokens) and the answer 12 digits: blocks of `K = 4` (two pairs), so the
cached grid adds `window=4` with marginal and head drafts. Same backbone, training
steps and head as `compare.py`.
"""
import ml_collections

from experiments.configs import compare


def get_config() -> ml_collections.ConfigDict:
  config = compare.get_config()
  config.data.task_kwargs = ml_collections.ConfigDict(dict(base=10, pairs=6, prompt_pad=1))
  config.compare.block_length = 4
  return config
