"""Sample quality on tiny Shakespeare judged by a causal model: one GPU.

The CPU config's experiment at the issue's size: rows of 256 bytes (256 generated
unconditionally, 192 after a 64-token prefix), budgets 8..256 sequential calls,
256 samples per row, ~25M-parameter models in bf16, and a third diffusion model
with a speculative head whose sequential drafts FeF verifies. Not yet run by the
project.

    python -m experiments.text_quality --config=experiments/configs/text_quality_gpu.py \
        --workdir=runs/text_quality_gpu
"""
import ml_collections

from experiments.configs import text_quality


def get_config() -> ml_collections.ConfigDict:
  config = text_quality.get_config()
  config.batch_size = 64
  config.eval_batch_size = 256
  config.data.length = 256
  config.data.eval_fraction = 0.1
  config.model.update(d_model=512, num_layers=8, num_heads=8, mlp_dim=1536,
                      dtype="bfloat16")
  config.optimizer.update(learning_rate=6e-4, total_steps=20_000, warmup_steps=500)
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint.every = 1000
  config.text_quality.update(
      models=("bidirectional", "block_causal", "head"), block_length=32, num_samples=256,
      batch_size=64, prefix_length=64, budgets=(8, 16, 32, 64, 128, 256),
      fef_options=dict(
          bidirectional=("order=random,window=8", "order=random,window=16",
                         "order=dilated,window=8", "order=dilated,window=16", "window=4",
                         "window=8", "window=16"),
          block_causal=("order=random,window=8", "order=random,window=16",
                        "order=dilated,window=8", "order=dilated,window=16", "window=4",
                        "window=8", "window=16"),
          head=("window=4", "window=8", "window=16")))
  return config
