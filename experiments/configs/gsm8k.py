"""GSM8K as prompt-conditioned training data: questions are never masked, worked
solutions are; a BPE tokenizer is trained on the training file and saved with the run.

Sized for one GPU (bf16); on a CPU override e.g. `--config.model.num_layers=2
--config.optimizer.total_steps=200` to try it.
"""
import ml_collections

from experiments.configs import tiny


def get_config() -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.batch_size = 64
  config.eval_batch_size = 128
  config.data = ml_collections.ConfigDict(dict(
      kind="gsm8k", path="../shared/data/gsm8k/train.jsonl", length=320,
      eval_fraction=0.02, tokenizer="bpe", bpe_vocab_size=4096))
  config.model.update(d_model=512, num_layers=8, num_heads=8, mlp_dim=1536,
                      dtype="bfloat16")
  config.optimizer.learning_rate = 6e-4
  config.optimizer.total_steps = 20_000
  config.optimizer.warmup_steps = 500
  config.loss.prefix_fraction = 0.1
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint.every = 1000
  config.sample.samplers = ()  # answers are checked by the GSM8K harness (fef_jax.eval)
  config.sample.every = 2000
  config.sample.num_periodic = 4
  config.sample.gen_length = 256
  config.sample.periodic_samplers = ("fef:steps=32,window=8,block_length=64",
                                     "confidence:steps=64,block_length=64")
  return config
