"""Generate with FeF (or any sampler) from a pretrained LLaDA / Dream checkpoint, or from a
model trained with experiments.train on text.

    python -m experiments.generate --checkpoint_dir=/ckpt/LLaDA-8B-Instruct --chat \
        --prompt="What is 17 * 23?" --method=fef --options=block_length=32,window=8
    # LLaDA's own low-confidence remasking baseline (the paper's reference setting):
    python -m experiments.generate --checkpoint_dir=... --chat --prompt=... \
        --method=confidence --options=steps=128,block_length=32
    # A run of experiments.train (its latest checkpoint's EMA parameters and tokenizer):
    python -m experiments.generate --config=experiments/configs/shakespeare.py \
        --workdir=runs/shakespeare --prompt="ROMEO:" --gen_length=64 \
        --method=fef --options=block_length=16,window=8

Several --prompt flags make one left-padded batch. The model flags are
`experiments.model_flags`' (a checkpoint's parameters are split over all devices when
there are several).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

from experiments import model_flags
from fef_jax import compile_cache
from fef_jax.eval.exactness import parse_sampler

_PROMPTS = flags.DEFINE_multi_string("prompt", ["Hello!"], "Prompt(s); repeat the flag.")
_METHOD = flags.DEFINE_string("method", "fef", "Sampler (fef_jax.METHODS).")
_OPTIONS = flags.DEFINE_string("options", "", "Sampler options, e.g. steps=64,block_length=32.")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 128, "Tokens generated per prompt.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs a trained run's restore at INFO
  compile_cache.enable()
  _, options = parse_sampler(f"{_METHOD.value}:{_OPTIONS.value}" if _OPTIONS.value
                             else _METHOD.value)
  complete = model_flags.completion_fn(jax.random.key(_SEED.value),
                                       gen_length=_GEN_LENGTH.value, method=_METHOD.value,
                                       batch_size=_BATCH.value, **options)
  texts = complete(list(_PROMPTS.value))
  for prompt, text in zip(_PROMPTS.value, texts):
    print(f">>> {prompt}\n{text}\n")
  stats = jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *complete.stats)
  print(json.dumps({"method": _METHOD.value, "options": options,
                    "seconds_with_compile": complete.seconds[0], **stats.summary()}, indent=1))


if __name__ == "__main__":
  app.run(main)
