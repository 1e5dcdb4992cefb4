"""Completion functions (`list[str] -> list[str]`) for the harnesses, from a model and a sampler.

Two sources of models:
- `hf_completion_fn`: a pretrained LLaDA / Dream checkpoint (`fef_jax.models.hf`),
  optionally wrapping each prompt in the checkpoint's chat template;
- `trained_completion_fn`: a model trained by `python -m experiments.train`
  on text data, with the tokenizer saved in its run directory.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections

from fef_jax import generate
from fef_jax.models import spec_head
from fef_jax.train import run

# End-of-turn tokens of instruct checkpoints, which are not always config.json's EOS.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>")

CompletionFn = Callable[[list[str]], list[str]]


def hf_stop_ids(model: Any) -> tuple[int, ...]:
  """EOS and every end-of-turn token the checkpoint's tokenizer has."""
  ids = {model.eos_id} if model.eos_id is not None else set()
  for token in END_OF_TURN_TOKENS:
    token_id = model.tokenizer.token_to_id(token)
    if token_id is not None:
      ids.add(token_id)
  return tuple(sorted(ids))


def hf_completion_fn(model: Any, key: jax.Array, *, chat: bool, gen_length: int,
                     method: str = "fef", batch_size: int = 8, progress: bool = False,
                     **options: Any) -> CompletionFn:
  """Completions of a loaded `fef_jax.models.hf.HFModel` with any sampler.

  Args:
    model: the loaded checkpoint (with its tokenizer).
    key: PRNG key.
    chat: send each prompt as one user message through the chat template
      (instruct models); else encode the raw prompt (with the tokenizer's BOS).
    gen_length, method, batch_size, progress, **options: see
      `fef_jax.generate.generate`.

  Raises:
    ValueError: the model was loaded without a tokenizer.
    fef_jax.models.hf.TokenizerError: `chat` on a checkpoint without a template.
  """
  tokenizer = model.tokenizer
  if tokenizer is None:
    raise ValueError("the model was loaded without its tokenizer (with_tokenizer=False)")

  def encode(prompt: str) -> list[int]:
    if chat:
      return tokenizer.encode_chat([{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt)

  logits_fn = model.logits_fn(generate.left_padding_valid_fn(model.pad_id))
  return generate.text_generate_fn(logits_fn, key, encode=encode, decode=tokenizer.decode,
                                   mask_id=model.mask_id, pad_id=model.pad_id,
                                   stop_ids=hf_stop_ids(model), gen_length=gen_length,
                                   method=method, batch_size=batch_size, progress=progress,
                                   **options)


def trained_completion_fn(config: ml_collections.ConfigDict, workdir: str, key: jax.Array, *,
                          gen_length: int, best: bool = False, method: str = "fef",
                          batch_size: int = 8, progress: bool = False,
                          **options: Any) -> CompletionFn:
  """Completions of a model trained on text data (`text`, `gsm8k`, `mbpp` kinds).

  The EMA parameters of the latest (or `best`) checkpoint in `workdir` and
  the run's tokenizer; prompts are left-padded to `max_length - gen_length`
  tokens, so prompt and completion fill the model's training length.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    ValueError: the run trained on a synthetic task (no tokenizer), a
      `gen_length` that leaves no room for prompts, or (when called) a prompt
      longer than `max_length - gen_length` tokens.
  """
  restored = run.restore_trained(config, workdir, best=best)
  tokenizer = restored["source"].tokenizer
  if tokenizer is None:
    raise ValueError(f"the run in {workdir} trained on a synthetic task, not text: "
                     f"use experiments.compare for task data")
  model = restored["model"]
  logits_fn = spec_head.make_denoiser(model, restored["state"].ema_params,
                                      valid_fn=generate.left_padding_valid_fn(tokenizer.pad_id))
  # Every call uses the model's whole length: one compiled sampler for all prompts.
  prompt_length = model.config.max_length - gen_length
  if prompt_length < 1:
    raise ValueError(f"gen_length={gen_length} leaves no room for a prompt within the "
                     f"model's max_length={model.config.max_length}")
  return generate.tokenizer_generate_fn(logits_fn, tokenizer, key, gen_length=gen_length,
                                        method=method, batch_size=batch_size,
                                        prompt_length=prompt_length, progress=progress,
                                        **options)
