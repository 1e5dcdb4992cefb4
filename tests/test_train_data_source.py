"""Training data from configs: GSM8K/MBPP as prompt-conditioned pairs, tokenizers saved
with the run, and a short text run logging TensorBoard scalars, samples and a best checkpoint."""
import json
import os
import pathlib
import struct
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from experiments.configs import tiny
from fef_jax.data import tokenizers
from fef_jax.train import data_source
from fef_jax.train import metric_writer
from fef_jax.train import run

DATA_DIR = pathlib.Path(os.environ.get(
    "FEF_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def _sft_config(kind, path, **overrides):
  return ml_collections.ConfigDict({**dict(kind=kind, path=str(path), length=256,
                                           eval_fraction=0.1, tokenizer="byte"), **overrides})


@pytest.mark.parametrize("kind, path", [("gsm8k", DATA_DIR / "gsm8k" / "test.jsonl"),
                                        ("mbpp", DATA_DIR / "mbpp" / "mbpp.jsonl")])
def test_sft_pairs_mask_only_the_answer_which_ends_with_eos(kind, path):
  source = data_source.build(_sft_config(kind, path), seed=0)
  tokenizer = source.tokenizer
  arrays = source.arrays
  total = arrays["tokens"].shape[0] + source.eval_arrays["tokens"].shape[0] + source.dropped
  assert total == len(path.read_text().splitlines())
  assert source.dropped > 0  # byte-level rows of 256 tokens cannot hold the longest items
  row = 0
  tokens, valid, maskable = (arrays[k][row] for k in ("tokens", "valid", "maskable"))
  prompt = tokenizer.decode(tokens[valid & ~maskable])
  answer = tokens[maskable]
  assert answer[-1] == tokenizer.eos_id
  assert prompt.startswith("Question: " if kind == "gsm8k" else '"""\nWrite')
  assert np.all(tokens[~valid] == tokenizer.pad_id) and not np.any(maskable & ~valid)
  # The prompt comes first, then the answer: no maskable position before a prompt one.
  assert np.flatnonzero(maskable)[0] == np.flatnonzero(valid & ~maskable)[-1] + 1


def test_bpe_tokenizer_is_saved_with_the_run_and_reused(tmp_path):
  config = _sft_config("mbpp", DATA_DIR / "mbpp" / "mbpp.jsonl", tokenizer="bpe",
                       bpe_vocab_size=400)
  first = data_source.build(config, 0, str(tmp_path / "tok"))
  assert (tmp_path / "tok" / tokenizers.FILENAME).is_file()
  again = data_source.build(config, 0, str(tmp_path / "tok"))
  assert again.fingerprint == first.fingerprint
  np.testing.assert_array_equal(again.arrays["tokens"], first.arrays["tokens"])
  config.tokenizer = "byte"
  with pytest.raises(ValueError, match="holds a 'bpe' tokenizer"):
    data_source.build(config, 0, str(tmp_path / "tok"))


@pytest.mark.parametrize("overrides, error, message", [
    ({"kind": "nope"}, ValueError, "unknown data kind"),
    ({"tokenizer": "words"}, ValueError, "unknown tokenizer"),
    ({"path": "/no/such/file.jsonl"}, FileNotFoundError, "file.jsonl"),
    ({"length": 8}, ValueError, "no gsm8k example fits"),
    ({"eval_fraction": 1.5}, ValueError, "eval_fraction"),
])
def test_bad_data_configs_fail_clearly(overrides, error, message):
  config = _sft_config("gsm8k", DATA_DIR / "gsm8k" / "test.jsonl")
  config.update(overrides)
  with pytest.raises(error, match=message):
    data_source.build(config, 0)


def _read_scalars(directory):
  """{tag: [(step, value)]} from TFRecord-framed event files, parsed independently."""
  scalars = {}
  for path in pathlib.Path(directory).glob("events.out.tfevents.*"):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4  # length, its crc, the record, its crc
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_metric_writer_writes_json_lines_and_tensorboard_scalars(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.scalars(1, {"loss": 2.5, "note": "text is json only"})
  writer.scalars(2, {"loss": 1.25})
  writer.texts(2, "samples/x", ["a\nb"])
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows == [{"loss": 2.5, "note": "text is json only", "step": 1},
                  {"loss": 1.25, "step": 2}]
  assert _read_scalars(tmp_path / "tensorboard") == {"loss": [(1, 2.5), (2, 1.25)]}
  sample = json.loads((tmp_path / "samples.jsonl").read_text())
  assert sample == {"step": 2, "name": "samples/x", "texts": ["a\nb"]}


def test_training_code_imports_tensorboardx_only_when_asked():
  # tensorboardX imports torch where it is installed (~0.8 s): the entry points that
  # import the training code without training must not pay it.
  script = (
      "import sys\n"
      "from fef_jax.train import run, metric_writer\n"
      "assert 'tensorboardX' not in sys.modules, 'imported with the training code'\n"
      "metric_writer.import_in_background().join()\n"
      "assert 'tensorboardX' in sys.modules, 'not imported by the background thread'\n")
  subprocess.run([sys.executable, "-c", script], check=True, cwd=pathlib.Path(__file__).parents[1])


def test_text_run_logs_tensorboard_periodic_samples_and_keeps_the_best_checkpoint(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("the cat sat on the mat. " * 400)
  config = tiny.get_config()
  config.batch_size = 8
  config.eval_batch_size = 8
  config.log_every = config.eval_every = 5
  config.data = ml_collections.ConfigDict(dict(
      kind="text", path=str(corpus), length=32, eval_fraction=0.1, tokenizer="bpe",
      bpe_vocab_size=300))
  config.model.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
  config.optimizer.update(total_steps=10, warmup_steps=2)
  config.checkpoint.update(every=5)
  config.sample.update(every=10, num_periodic=2, prefix_length=8, gen_length=8,
                       periodic_samplers=("fef:steps=2,window=4", "confidence:steps=2"))
  out = run.train(config, str(tmp_path / "run"), progress=False)
  workdir = tmp_path / "run"
  assert (workdir / "tokenizer" / tokenizers.FILENAME).is_file()
  scalars = _read_scalars(workdir / "tensorboard")
  assert [step for step, _ in scalars["eval_elbo_bits"]] == [5, 10]
  # TensorBoard tags allow [A-Za-z0-9_./-]: tensorboardX replaces the rest by "_".
  assert "sample/fef_steps_2_window_4/calls" in scalars and "step" not in scalars
  samples = [json.loads(line) for line in (workdir / "samples.jsonl").read_text().splitlines()]
  assert {s["name"] for s in samples} == {"samples/fef:steps=2,window=4",
                                         "samples/confidence:steps=2"}
  assert all(len(s["texts"]) == 2 and " >>> " in s["texts"][0] for s in samples)
  best_step = min(scalars["eval_elbo_bits"], key=lambda sv: sv[1])[0]
  assert sorted(os.listdir(workdir / "best")) == [str(best_step)]
  assert out["metrics"]["step"] == 10
