"""Sampler compile benchmark: a trained model's parameters as arguments or as constants.

    python -m experiments.benchmark_compile [--d_model=768] [--num_layers=12] [--length=128]
        [--masked=8] [--vocab_size=256] [--batch=1] [--samplers=fef:steps=1;window=4,...]
        [--modes=arguments,constants] [--cache_dir=] [--workdir=runs/compile]

Prints a Markdown table and writes sampler_compile.json and sampler_compile.md (see
fef_jax.bench.sampler_compile): per sampler and mode, the first `fj.sample` call of a
denoiser, a call with a second denoiser of the same model, a warm call, and what the
calls wrote to JAX's persistent compilation cache. The defaults are the 85M `gpu`
config's model (d=768, 12 layers, V=256) on 128-token rows.
"""
import shutil
import tempfile

import jax
from absl import app
from absl import flags

from fef_jax.bench import sampler_compile

_D_MODEL = flags.DEFINE_integer("d_model", 768, "Model width.")
_LAYERS = flags.DEFINE_integer("num_layers", 12, "Transformer layers.")
_LENGTH = flags.DEFINE_integer("length", 128, "Sequence length L.")
_MASKED = flags.DEFINE_integer("masked", 8, "Masked positions at the end of each row.")
_VOCAB = flags.DEFINE_integer("vocab_size", 256, "Vocabulary size.")
_BATCH = flags.DEFINE_integer("batch", 1, "Rows per call.")
_SAMPLERS = flags.DEFINE_list("samplers", ["fef:steps=1;window=4", "first_hitting"],
                              "Sampler specs without a cache ('method:opt=val;...').")
_MODES = flags.DEFINE_list("modes", list(sampler_compile.MODES),
                           "How the parameters reach the program.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", "", "JAX's persistent compilation cache: empty for a fresh temporary "
    "directory (a first run of an experiment; removed at the end), 'off' for none.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compile", "Where results are written.")


def main(argv):
  del argv
  cache_dir = None
  if _CACHE_DIR.value != "off":
    cache_dir = _CACHE_DIR.value or tempfile.mkdtemp(prefix="fef_jax_compile_")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
  try:
    _measure(cache_dir)
  finally:
    if cache_dir and not _CACHE_DIR.value:
      shutil.rmtree(cache_dir, ignore_errors=True)


def _measure(cache_dir):
  specs = [spec.replace(";", ",") for spec in _SAMPLERS.value]
  config = {"d_model": _D_MODEL.value, "num_layers": _LAYERS.value, "length": _LENGTH.value,
            "masked": _MASKED.value, "vocab_size": _VOCAB.value, "batch": _BATCH.value,
            "samplers": specs, "modes": _MODES.value, "cache_dir": cache_dir}
  rows = sampler_compile.measure(specs, d_model=_D_MODEL.value, num_layers=_LAYERS.value,
                                 length=_LENGTH.value, masked=_MASKED.value,
                                 vocab_size=_VOCAB.value, batch=_BATCH.value,
                                 modes=_MODES.value, cache_dir=cache_dir)
  print(sampler_compile.format_table(rows))
  paths = sampler_compile.write(rows, config, _WORKDIR.value)
  print("wrote", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
