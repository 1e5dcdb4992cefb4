"""Sample quality on GSM8K worked solutions (question + solution as text), judged by a
causal model trained on the same split; a BPE tokenizer trained on it, shared by
every model. Sized for one GPU; on a CPU shrink it, e.g.
`--config.model.num_layers=2 --config.optimizer.total_steps=300`.

    python -m experiments.text_quality --config=experiments/configs/text_quality_gsm8k.py \
        --workdir=runs/text_quality_gsm8k
"""
import ml_collections

from experiments.configs import text_quality_gpu


def get_config() -> ml_collections.ConfigDict:
  config = text_quality_gpu.get_config()
  config.data = ml_collections.ConfigDict(dict(
      kind="gsm8k_text", path="../shared/data/gsm8k/train.jsonl", length=256,
      eval_fraction=0.05, tokenizer="bpe", bpe_vocab_size=4096))
  return config
