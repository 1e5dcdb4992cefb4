"""Entry points on real code paths: generation from a (tiny random) LLaDA checkpoint and
benchmark scoring of an imported and of a trained model."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import tiny
from fef_jax.eval import benchmarks
from fef_jax.eval import completion
from fef_jax.models import hf
from fef_jax.train import run
from tests import hf_reference as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = pathlib.Path(os.environ.get(
    "FEF_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
GSM8K_TEST = DATA_DIR / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("llada")
  ref.make_llada(str(directory))
  return directory


def _run(module, *flags):
  done = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


@pytest.mark.parametrize("method, options", [
    ("fef", "block_length=4,window=4"),
    ("fef", "block_length=4,window=4,cache=approximate,refresh_every=1"),
    ("confidence", "steps=8,block_length=4")])
def test_generate_experiment_samples_a_checkpoint_in_a_batch(llada_dir, method, options):
  out = _run("experiments.generate", f"--checkpoint_dir={llada_dir}", "--prompt=a b c",
             "--prompt=d", "--chat", f"--method={method}", f"--options={options}",
             "--gen_length=8", "--dtype=float32")
  stats = json.loads(out[out.index("{"):])
  assert stats["method"] == method and stats["tokens"] == 8
  assert out.count(">>> ") == 2


def test_generate_experiment_samples_a_model_trained_on_text(tmp_path):
  # A tiny byte-level Shakespeare run (the same flags make the same model for both).
  flags = ["--config=experiments/configs/shakespeare.py", f"--workdir={tmp_path}",
           f"--config.data.path={DATA_DIR / 'tinyshakespeare' / 'input.txt'}",
           "--config.data.length=32", "--config.model.d_model=32", "--config.model.num_layers=1",
           "--config.model.num_heads=2", "--config.model.mlp_dim=64", "--config.batch_size=4",
           "--config.eval_batch_size=4", "--config.optimizer.total_steps=2",
           "--config.optimizer.warmup_steps=1", "--config.steps_per_call=1",
           "--config.log_every=2", "--config.eval_every=2", "--config.checkpoint.every=2",
           "--config.sample.every=0"]
  _run("experiments.train", *flags)
  out = _run("experiments.generate", *flags, "--prompt=ROMEO:", "--prompt=To be",
             "--gen_length=8", "--method=fef", "--options=block_length=4,window=4")
  stats = json.loads(out[out.index("{"):])
  assert stats["method"] == "fef" and stats["tokens"] == 8
  assert ">>> ROMEO:" in out and ">>> To be" in out


@pytest.mark.parametrize("flags, message", [
    ((), "give --checkpoint_dir, or --config and --workdir"),
    (("--checkpoint_dir=x", "--workdir=y"), "not both"),
    (("--workdir=y",), "needs both --config and --workdir"),
    (("--config=experiments/configs/shakespeare.py", "--workdir=y", "--chat"), "chat template")])
def test_generate_experiment_names_a_missing_or_conflicting_model(flags, message):
  done = subprocess.run([sys.executable, "-m", "experiments.generate", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("module", ["experiments.evaluate", "experiments.generate"])
def test_entry_points_refuse_a_checkpoint_option_with_a_trained_model(module):
  done = subprocess.run([sys.executable, "-m", module,
                         "--config=experiments/configs/shakespeare.py", "--workdir=y",
                         "--dtype=float32"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode != 0 and "--config.model.dtype" in done.stderr, done.stderr[-2000:]


def test_hf_completion_stops_at_end_of_turn_tokens(llada_dir):
  model = hf.load(str(llada_dir))
  stops = completion.hf_stop_ids(model)
  assert model.eos_id in stops
  complete = completion.hf_completion_fn(model, jax.random.key(0), chat=False, gen_length=6,
                                         batch_size=2, steps=6)
  texts = complete(["a b", "c d e", "f"])
  assert len(texts) == 3 and len(complete.stats) == 1


def test_evaluate_experiment_scores_an_imported_checkpoint_on_gsm8k(llada_dir, tmp_path):
  out_path = tmp_path / "result.json"
  out = _run("experiments.evaluate", f"--checkpoint_dir={llada_dir}", "--benchmark=gsm8k",
             f"--data={GSM8K_TEST}", "--limit=3", "--gen_length=8", "--dtype=float32",
             "--batch_size=3", "--method=fef", "--options=window=4", f"--out={out_path}")
  assert "gsm8k:" in out and "over 3 problems" in out
  result = json.loads(out_path.read_text())
  assert len(result["items"]) == 3 and result["sampler"]["tokens"] == 8
  # A random model does not solve GSM8K; the score is a valid proportion with its interval.
  assert 0 <= result["accuracy"]["low"] <= result["accuracy"]["value"] <= result["accuracy"]["high"]


def test_trained_gsm8k_model_is_scored_through_its_saved_tokenizer(tmp_path):
  config = tiny.get_config()
  config.batch_size = config.eval_batch_size = 8
  config.data = ml_collections.ConfigDict(dict(
      kind="gsm8k", path=str(GSM8K_TEST), length=256, eval_fraction=0.05, tokenizer="bpe",
      bpe_vocab_size=1200))
  config.model.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
  config.optimizer.update(total_steps=4, warmup_steps=1)
  config.log_every = config.eval_every = config.checkpoint.every = 4
  config.checkpoint.best_metric = None
  config.sample.every = 0
  workdir = str(tmp_path / "run")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    completion.trained_completion_fn(config, workdir, jax.random.key(0), gen_length=32)
  run.train(config, workdir, progress=False)
  complete = completion.trained_completion_fn(config, workdir, jax.random.key(0),
                                              gen_length=32, batch_size=4, steps=4)
  result = benchmarks.run("gsm8k", complete, str(GSM8K_TEST), batch_size=4, limit=4)
  assert result.accuracy.n == 4 and len(result.items) == 4
  assert np.all(np.asarray(complete.stats[0].tokens) <= 32)
  with pytest.raises(ValueError, match="no room"):
    completion.trained_completion_fn(config, workdir, jax.random.key(0), gen_length=256)


def test_benchmark_loader_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match="unknown benchmark"):
    benchmarks.load("math", str(GSM8K_TEST))
  with pytest.raises(FileNotFoundError):
    benchmarks.load("humaneval", str(tmp_path / "HumanEval.jsonl"))
  assert [r.task_id for r in benchmarks.load("mbpp", str(DATA_DIR / "mbpp" / "mbpp.jsonl"),
                                             limit=2)] == [11, 12]
  with pytest.raises(ValueError, match="num_shots"):
    benchmarks.run("mbpp", lambda p: p, str(DATA_DIR / "mbpp" / "mbpp.jsonl"), batch_size=1,
                   num_shots=2)
