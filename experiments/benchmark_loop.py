"""Loop-overhead benchmark: a sampler's step or FeF round against a bare denoiser call.

    python -m experiments.benchmark_loop [--d_models=96,256] [--num_layers=3] [--length=32]
        [--vocab_size=32] [--block_length=0] [--batches=1,64] [--samplers=first_hitting,...]
        [--workdir=runs/loop]

Prints a Markdown table and writes loop_cost.json and loop_cost.md (see
fef_jax.bench.loop_cost): per sampler, the wall-clock of one more step or round,
the same rows' denoiser call inside a loop, their ratio (the target is <= 1.3), and
the fixed cost of one `fj.sample` call.
"""
from absl import app
from absl import flags

from fef_jax.bench import loop_cost

_D_MODELS = flags.DEFINE_list("d_models", ["96", "256"], "Model widths.")
_LAYERS = flags.DEFINE_integer("num_layers", 3, "Transformer layers.")
_LENGTH = flags.DEFINE_integer("length", 32, "Sequence length L.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32, "Vocabulary size.")
_BLOCK = flags.DEFINE_integer("block_length", 0,
                              "Attention block of a block-causal model (for cache=exact "
                              "specs); 0: bidirectional.")
_BATCHES = flags.DEFINE_list("batches", ["1", "64"], "Batch sizes B.")
_SAMPLERS = flags.DEFINE_list(
    "samplers", ["first_hitting", "confidence:select=position",
                 "fef:window=1", "fef:window=4", "fef:window=8"],
    "Sampler specs ('method:opt=val;...' with ';' between options).")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Timed runs per measurement (median).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/loop", "Where results are written.")


def main(argv):
  del argv
  specs = [spec.replace(";", ",") for spec in _SAMPLERS.value]
  config = {"d_models": [int(d) for d in _D_MODELS.value], "num_layers": _LAYERS.value,
            "length": _LENGTH.value, "vocab_size": _VOCAB.value,
            "block_length": _BLOCK.value or None,
            "batches": [int(b) for b in _BATCHES.value], "samplers": specs,
            "repeats": _REPEATS.value}
  rows = [row for d_model in config["d_models"] for batch in config["batches"]
          for row in loop_cost.measure(specs, d_model=d_model, num_layers=config["num_layers"],
                                       length=config["length"],
                                       vocab_size=config["vocab_size"], batch=batch,
                                       repeats=config["repeats"],
                                       block_length=config["block_length"])]
  print(loop_cost.format_table(rows))
  paths = loop_cost.write(rows, config, _WORKDIR.value)
  print("wrote", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
