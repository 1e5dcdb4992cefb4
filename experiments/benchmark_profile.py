"""Op-by-op profile of sampler calls: what a step or round launches and where its time goes.

    python -m experiments.benchmark_profile [--samplers=first_hitting,...] [--batch=1]
        [--d_model=96] [--num_layers=3] [--runs=20] [--workdir=runs/op_profile]

Traces warm `fj.sample` calls of a random-init block-causal transformer (the
comparison's backbone by default) with `jax.profiler` and writes op_profile.json and
op_profile.md (see fef_jax.bench.op_profile): per sampler, its wall-clock per call and,
per profiler process (host, each accelerator), events per call and the top ops.
On a GPU the device rows say how many kernels a step or round launches and how long
they run; the rest of a call's wall-clock is launch, synchronization and host time.
"""
from absl import app
from absl import flags

from fef_jax.bench import op_profile

_SAMPLERS = flags.DEFINE_list(
    "samplers", ["first_hitting", "fef:block_length=2;cache=exact;window=1",
                 "fef:block_length=2;cache=exact;window=2",
                 "fef:steps=1;order=dilated;window=5",
                 "fef:steps=1;order=parity;window=5;cache=prefix"],
    "Sampler specs ('method:opt=val;...' with ';' between options).")
_D_MODEL = flags.DEFINE_integer("d_model", 96, "Model width.")
_LAYERS = flags.DEFINE_integer("num_layers", 3, "Transformer layers.")
_LENGTH = flags.DEFINE_integer("length", 16, "Sequence length L.")
_MASKED = flags.DEFINE_integer("masked", 10, "Masked positions at the end of each prompt.")
_VOCAB = flags.DEFINE_integer("vocab_size", 30, "Vocabulary size.")
_BLOCK = flags.DEFINE_integer("block_length", 2, "Attention block length.")
_BATCH = flags.DEFINE_integer("batch", 1, "Rows per call.")
_RUNS = flags.DEFINE_integer("runs", 20, "Traced calls per sampler.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/op_profile", "Where results are written.")


def main(argv):
  del argv
  config = {"samplers": [spec.replace(";", ",") for spec in _SAMPLERS.value],
            "d_model": _D_MODEL.value, "num_layers": _LAYERS.value, "length": _LENGTH.value,
            "masked": _MASKED.value, "vocab_size": _VOCAB.value,
            "block_length": _BLOCK.value, "batch": _BATCH.value, "runs": _RUNS.value}
  rows = op_profile.measure(config["samplers"], **{k: v for k, v in config.items()
                                                   if k != "samplers"})
  print(op_profile.format_table(rows))
  paths = op_profile.write(rows, config, _WORKDIR.value)
  print("wrote", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
