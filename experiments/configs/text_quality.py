"""Sample quality on tiny Shakespeare (bytes), judged by a causal model: CPU-sized.

Every model (the causal judge, the bidirectional and the block-causal diffusion
model) shares these training fields; `fef_jax.eval.text_models.training_config`
makes each one's differences (attention, objective). Rows of 128 bytes; the
unconditional samples are 128 tokens long, the continuations 96 after a 32-token
held-out prefix. Sized to finish within ~30 minutes on 2 CPU cores, training
included (see docs/text_quality.md); `text_quality_gpu.py` is the GPU size.

    python -m experiments.text_quality --config=experiments/configs/text_quality.py \
        --workdir=runs/text_quality
"""
import ml_collections

from experiments.configs import shakespeare


def get_config() -> ml_collections.ConfigDict:
  config = shakespeare.get_config()
  config.batch_size = 32
  config.eval_batch_size = 128
  config.model.update(d_model=96, num_layers=3, num_heads=4, mlp_dim=288)
  config.optimizer.update(learning_rate=2e-3, total_steps=600, warmup_steps=50)
  config.loss.prefix_fraction = 0.1
  config.eval_every = 200
  config.checkpoint.every = 200
  config.sample.every = 0
  # models: any of bidirectional, block_causal, head (a speculative head for FeF's drafts).
  # budgets: the parallel baselines' sequential calls (capped at the generated length).
  # fef_options: per model, FeF's rows (options after the model's FeF prefix); each is
  # tested against the one-token decoder of its order. samplers: explicit specs for every
  # model, replacing the grid.
  config.text_quality = ml_collections.ConfigDict(dict(
      models=("bidirectional", "block_causal"), block_length=16, judge_steps=0,
      num_samples=64, batch_size=32, modes=("unconditional", "prefix"), prefix_length=32,
      budgets=(8, 16, 32, 64),
      fef_options=dict(
          bidirectional=("order=random,window=4", "order=random,window=8",
                         "order=dilated,window=8", "window=4"),
          block_causal=("order=random,window=8", "order=dilated,window=8", "window=4",
                        "window=8"),
          head=("window=4", "window=8")),
      samplers=()))
  return config
