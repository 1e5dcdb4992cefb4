"""The sampler comparison on PairSum with 15 pairs: answers three times as long.

Exact one-token decoders make one sequential call per answer token, 30 here. FeF's
calls are set by how deep the answer's dependence runs, not by its length: in the
dilated order (`order="dilated"`) the 15 first digits of the pairs come first, one round
accepts them, and the next drafts each second digit from a copy that reveals its first
(`fef_jax.eval.compare.dilated_window`: 15 copies). On PairSum with 5 pairs that is 3
calls against 10; here about the same 3 against 30, so on hardware where a call of 15
copies costs little more than one call (a GPU at batch 1, where the sampler is
launch-bound) the wall-clock gap should widen with the answer.

    python -m experiments.compare --config=experiments/configs/compare_long.py \
        --workdir=runs/compare_long

Only the block-causal model with its head (attention blocks of 2 divide the 16-token
prompt, 15 targets and SEP, and the 30-token answer): its grid
(`fef_jax.eval.compare.cached_samplers`) holds the exact one-token references, whole-copy
FeF left to right and in the dilated order, FeF in the parity order over one drafted
state per round (`cache="prefix"`: the same few calls, at a sixth of the whole copies'
positions), and FeF over the exact cache. Batch 1 only: the latency regime, where
speculation can pay.
"""
import ml_collections

from experiments.configs import compare


def get_config() -> ml_collections.ConfigDict:
  config = compare.get_config()
  config.data.task_kwargs = dict(base=10, pairs=15)
  config.compare.models = ("block_causal_head",)
  config.compare.num_prompts = 256
  config.compare.batch_sizes = (1,)
  return config
