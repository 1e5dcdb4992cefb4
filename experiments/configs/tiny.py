"""Tiny CPU default: a small transformer learns the Permutation task in a few minutes.

Permutation answers are any ordering of the prompt's symbols: a one-step parallel
sample repeats symbols, an exact joint sample does not.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128
  config.eval_batch_size = 512
  config.log_every = 50
  config.eval_every = 200
  # 0: a NaN or infinite loss or gradient norm stops training, naming the step.
  # N > 0: such a step makes no update (counted in `skipped_steps`); more than N
  # in a row stop training.
  config.skip_nonfinite_steps = 0
  # Batches prepared and placed on the devices ahead of the step, on a thread (0: none).
  config.prefetch_batches = 2
  # Training steps per jitted call (a scan over stacked batches; the same math): the
  # per-call costs (dispatch, batch transfer, the runtime's setup of a call) are paid
  # once per K steps. A call ends where logging, evaluation, samples or checkpoints are
  # due, so K should divide their periods. On the 2-core CPU, K = 10 trains this config
  # 1.3-1.5x faster than K = 1 (BENCHMARKS.md, Training throughput).
  config.steps_per_call = 10
  config.data = ml_collections.ConfigDict(dict(
      kind="task", task="permutation", task_kwargs=dict(alphabet_size=8, length=5),
      num_examples=50_000, num_eval_examples=1024))
  # remat: a policy name (fef_jax.models.transformer.REMAT_POLICIES: none, full,
  # dots_saveable, dots_with_no_batch_dims_saveable); true/false mean full/none;
  # attention_impl: "auto" (cuDNN flash attention where it can run, else XLA), "xla", "cudnn";
  # dtype: the compute dtype's name ("float32", "bfloat16", "float16"; parameters stay
  # float32).
  config.model = ml_collections.ConfigDict(dict(
      d_model=64, num_layers=3, num_heads=4, mlp_dim=192, time_conditioning=False,
      tie_embeddings=True, remat="none", attention="bidirectional",
      block_length=ml_collections.config_dict.placeholder(int),
      attention_impl="auto", dtype="float32",
      head_layers=0))  # > 0: a single-pass speculative head (fef_jax.models.spec_head)
  # mu_dtype: Adam's first moment; None (float32) or "bfloat16".
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, warmup_steps=100, total_steps=800, weight_decay=0.01,
      grad_clip=1.0, grad_accum_steps=1,
      mu_dtype=ml_collections.config_dict.placeholder(str)))
  # logits_chunk: 0 scores the whole [B, L, V] logits; C > 0 projects and scores C
  # positions at a time (large vocabularies; see fef_jax.train.step.LossConfig).
  config.loss = ml_collections.ConfigDict(dict(
      schedule="linear", eps=1e-3, prefix_fraction=0.25, ema_decay=0.99,
      head_weight=0.0, head_items=0,  # the head's any-order AR loss (with head_layers)
      logits_chunk=0))
  # The latest `max_to_keep` checkpoints (to resume) and, in workdir/best, the
  # evaluated one with the lowest `best_metric`.
  config.checkpoint = ml_collections.ConfigDict(dict(
      every=200, max_to_keep=2, best_metric="eval_elbo_bits", best_mode="min"))
  # Devices: data-parallel over all of them (-1), parameters split over `fsdp`,
  # attention heads and MLP features over `tensor`.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # `samplers` run on `num_prompts` held-out prompts after training; every
  # `every` steps (0: never) `periodic_samplers` run on `num_periodic` of them
  # (text data: completions of `gen_length` tokens after `prefix_length`-token
  # prefixes of held-out text, or after held-out GSM8K/MBPP prompts).
  config.sample = ml_collections.ConfigDict(dict(
      num_prompts=512,
      samplers=("ancestral:steps=1", "confidence:steps=1", "confidence:steps=5",
                "confidence:steps=3,select=dilated", "first_hitting",
                "fef:steps=1,window=5"),
      every=400, num_periodic=128,
      periodic_samplers=("fef:steps=1,window=5", "confidence:steps=1"),
      gen_length=64, prefix_length=32))
  return config
