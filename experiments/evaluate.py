"""Score a model + sampler on GSM8K, MBPP or HumanEval.

A pretrained LLaDA / Dream checkpoint (local Hugging Face layout):
    python -m experiments.evaluate --checkpoint_dir=/ckpt/LLaDA-8B-Instruct --chat \
        --benchmark=gsm8k --data=../shared/data/gsm8k/test.jsonl \
        --method=fef --options=block_length=32,window=8 --gen_length=256
A model trained with experiments.train on text data:
    python -m experiments.evaluate --config=experiments/configs/gsm8k.py --workdir=runs/gsm8k \
        --benchmark=gsm8k --data=../shared/data/gsm8k/test.jsonl --limit=100

The model flags (`--checkpoint_dir`, or `--config`, `--workdir` and `--best`; `--chat`,
`--dtype`) are `experiments.model_flags`'. Prints the score with its 95% interval and the
sampler's cost; writes every item to --out (JSON).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

from experiments import model_flags
from fef_jax import compile_cache
from fef_jax.eval import benchmarks
from fef_jax.eval.exactness import parse_sampler
from fef_jax.types import SampleStats

_BENCHMARK = flags.DEFINE_enum("benchmark", "gsm8k", benchmarks.BENCHMARKS, "Benchmark.")
_DATA = flags.DEFINE_string("data", "../shared/data/gsm8k/test.jsonl", "Benchmark file.")
_LIMIT = flags.DEFINE_integer("limit", None, "Score the first N problems only.")
_SHOTS = flags.DEFINE_integer("num_shots", 0, "GSM8K solved examples per prompt.")
_SHOTS_PATH = flags.DEFINE_string("shots_path", None, "GSM8K file the examples come from.")
_METHOD = flags.DEFINE_string("method", "fef", "Sampler (fef_jax.METHODS).")
_OPTIONS = flags.DEFINE_string("options", "", "Sampler options, e.g. steps=64,block_length=32.")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 256, "Tokens generated per prompt.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON result "
                           "(default: <workdir or .>/eval_<benchmark>_<method>.json).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs a trained run's restore at INFO
  compile_cache.enable()
  _, options = parse_sampler(f"{_METHOD.value}:{_OPTIONS.value}" if _OPTIONS.value
                             else _METHOD.value)
  complete = model_flags.completion_fn(jax.random.key(_SEED.value),
                                       gen_length=_GEN_LENGTH.value, method=_METHOD.value,
                                       batch_size=_BATCH.value, **options)
  result = benchmarks.run(_BENCHMARK.value, complete, _DATA.value, batch_size=_BATCH.value,
                          limit=_LIMIT.value, num_shots=_SHOTS.value,
                          shots_path=_SHOTS_PATH.value, progress=True)
  summary = result.to_json()
  stats = jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *complete.stats)
  summary["sampler"] = {"method": _METHOD.value, "options": options,
                        "seconds": float(sum(complete.seconds)),
                        **SampleStats.summary(stats)}
  score = summary.get("accuracy", summary.get("pass_at_1"))
  print(json.dumps({k: v for k, v in summary.items() if k != "items"}, indent=1))
  print(f"{_BENCHMARK.value}: {score['value']:.4f} "
        f"[{score['low']:.4f}, {score['high']:.4f}] over {score['n']} problems")
  out = _OUT.value or os.path.join(model_flags.WORKDIR.value or ".",
                                   f"eval_{_BENCHMARK.value}_{_METHOD.value}.json")
  with open(out, "w") as f:
    json.dump(summary, f, indent=1)
  print("written:", out)


if __name__ == "__main__":
  app.run(main)
