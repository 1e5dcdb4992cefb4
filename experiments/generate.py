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

Several --prompt flags make one left-padded batch. A checkpoint's parameters are split over
all devices (an `fsdp` mesh axis) when there are several.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from fef_jax import compile_cache
from fef_jax.eval import completion
from fef_jax.eval.exactness import parse_sampler
from fef_jax.train import sharding

_CHECKPOINT = flags.DEFINE_string("checkpoint_dir", None, "A LLaDA / Dream checkpoint.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config of --workdir.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A run of experiments.train on text data.")
_BEST = flags.DEFINE_bool("best", False, "With --workdir: its best checkpoint, not the latest.")
_PROMPTS = flags.DEFINE_multi_string("prompt", ["Hello!"], "Prompt(s); repeat the flag.")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap prompts in the checkpoint's chat template.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                           "Checkpoint compute and parameter dtype.")
_METHOD = flags.DEFINE_string("method", "fef", "Sampler (fef_jax.METHODS).")
_OPTIONS = flags.DEFINE_string("options", "", "Sampler options, e.g. steps=64,block_length=32.")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 128, "Tokens generated per prompt.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")


def _completion_fn(options) -> completion.CompletionFn:
  key = jax.random.key(_SEED.value)
  common = dict(gen_length=_GEN_LENGTH.value, method=_METHOD.value,
                batch_size=_BATCH.value, **options)
  trained = _CONFIG.value is not None or _WORKDIR.value is not None
  if bool(_CHECKPOINT.value) == trained:
    raise app.UsageError("give --checkpoint_dir, or --config and --workdir (not both)")
  if _CHECKPOINT.value:
    from fef_jax.models import hf  # pylint: disable=import-outside-toplevel
    mesh = sharding.make_mesh(data=1, fsdp=-1) if jax.device_count() > 1 else None
    model = hf.load(_CHECKPOINT.value, dtype=getattr(jnp, _DTYPE.value), mesh=mesh)
    return completion.hf_completion_fn(model, key, chat=_CHAT.value, **common)
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("a trained model needs both --config and --workdir")
  if _CHAT.value:
    raise app.UsageError("--chat needs a checkpoint's chat template (--checkpoint_dir)")
  return completion.trained_completion_fn(_CONFIG.value, _WORKDIR.value, key,
                                          best=_BEST.value, **common)


def main(argv):
  del argv
  compile_cache.enable()
  _, options = parse_sampler(f"{_METHOD.value}:{_OPTIONS.value}" if _OPTIONS.value
                             else _METHOD.value)
  complete = _completion_fn(options)
  texts = complete(list(_PROMPTS.value))
  for prompt, text in zip(_PROMPTS.value, texts):
    print(f">>> {prompt}\n{text}\n")
  stats = jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *complete.stats)
  print(json.dumps({"method": _METHOD.value, "options": options,
                    "seconds_with_compile": complete.seconds[0], **stats.summary()}, indent=1))


if __name__ == "__main__":
  app.run(main)
