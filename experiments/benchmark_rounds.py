"""Round-cost benchmark: FeF verification over whole-sequence copies, block-local copies, or a head.

    python -m experiments.benchmark_rounds [--d_models=128,256] [--lengths=128,256]
        [--span=32] [--windows=4,8,16] [--tokens_per_round=3] [--batch=4] [--num_layers=4]
        [--vocab_size=256] [--dtype=float32|bfloat16] [--workdir=runs/rounds]

The 1.3B-width bf16 row of BENCHMARKS.md (on a GPU):
    python -m experiments.benchmark_rounds --d_models=2048 --lengths=1024 --windows=4,16
        --batch=1 --dtype=bfloat16

Prints a Markdown table (costs in units of one whole-sequence call) and writes
round_cost.json, round_cost.md and round_cost.png (see fef_jax.bench.round_cost).
"""
from absl import app
from absl import flags

from fef_jax.bench import round_cost

_D_MODELS = flags.DEFINE_list("d_models", ["128", "256"], "Model widths.")
_LENGTHS = flags.DEFINE_list("lengths", ["128", "256"], "Sequence lengths L.")
_SPAN = flags.DEFINE_integer("span", 32, "Attention block length S of the block-causal model.")
_WINDOWS = flags.DEFINE_list("windows", ["4", "8", "16"], "Copies per round W.")
_BATCH = flags.DEFINE_integer("batch", 4, "States B evaluated per round.")
_LAYERS = flags.DEFINE_integer("num_layers", 4, "Transformer layers.")
_VOCAB = flags.DEFINE_integer("vocab_size", 256, "Vocabulary size.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "Compute dtype of the model (parameters stay float32).")
_HEAD_LAYERS = flags.DEFINE_integer("head_layers", 1, "Layers of the speculative head.")
_TOKENS = flags.DEFINE_float("tokens_per_round", 3.0,
                             "Tokens committed per round, for the implied speed-up.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per measurement (median).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/rounds", "Where results are written.")


def main(argv):
  del argv
  config = {"d_models": [int(d) for d in _D_MODELS.value],
            "lengths": [int(n) for n in _LENGTHS.value], "span": _SPAN.value,
            "windows": [int(w) for w in _WINDOWS.value], "batch": _BATCH.value,
            "num_layers": _LAYERS.value, "vocab_size": _VOCAB.value, "dtype": _DTYPE.value,
            "head_layers": _HEAD_LAYERS.value,
            "tokens_per_round": _TOKENS.value, "repeats": _REPEATS.value}
  rows = round_cost.run_grid(
      config["d_models"], config["lengths"], config["span"], config["windows"],
      batch=config["batch"], num_layers=config["num_layers"],
      vocab_size=config["vocab_size"], tokens_per_round=config["tokens_per_round"],
      head_layers=config["head_layers"], dtype=config["dtype"],
      repeats=config["repeats"])
  print(round_cost.format_table(rows))
  paths = round_cost.write(rows, config, _WORKDIR.value)
  print("wrote", ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
