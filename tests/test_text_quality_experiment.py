"""The text-quality experiment: the judge trained by the training loop, its tokenizer check,
bad configs, and a tiny run end to end writing every file with every sampler row."""
import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import text_quality as text_quality_config
from fef_jax.data import tokenizers
from fef_jax.eval import judge as judge_lib
from fef_jax.eval import text_experiment
from fef_jax.eval import text_models
from fef_jax.eval import text_quality
from fef_jax.train import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = pathlib.Path(os.environ.get(
    "FEF_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
SHAKESPEARE = DATA_DIR / "tinyshakespeare" / "input.txt"
# Left to right on one model, random order on the other: both kinds of reference.
_FEF = {"bidirectional": ("window=2",), "block_causal": ("order=random,window=2",)}
_BUDGETS = (16,)  # the prefix mode's full length: its samplers compile once per model


def _tiny_corpus(tmp_path, chars=40_000):
  path = tmp_path / "corpus.txt"
  path.write_text(SHAKESPEARE.read_text()[:chars])
  return str(path)


def _tiny_config(tmp_path):
  config = text_quality_config.get_config()
  config.data.update(path=_tiny_corpus(tmp_path), length=32)
  config.model.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
  config.update(batch_size=8, eval_batch_size=16, log_every=2, eval_every=4)
  config.optimizer.update(total_steps=4, warmup_steps=1)
  config.checkpoint.every = 4
  config.text_quality.update(num_samples=4, batch_size=2, prefix_length=16, block_length=8,
                             budgets=_BUDGETS)
  config.text_quality.fef_options.update(_FEF)
  return config


def test_every_text_quality_config_builds_valid_training_configs():
  for name in ("text_quality", "text_quality_gpu", "text_quality_gsm8k"):
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    text_experiment.check_config(config)
    judge = text_models.training_config(config, text_models.JUDGE)
    assert (judge.model.attention, judge.model.block_length, judge.loss.objective) == (
        "block_causal", 1, "causal")
    for variant in config.text_quality.models:
      trained = text_models.training_config(config, variant)
      assert "text_quality" not in trained and trained.sample.every == 0
      assert trained.loss.get("objective", "diffusion") == "diffusion"
      assert (trained.model.attention == "block_causal") == (variant == "block_causal")
      assert (trained.model.head_layers > 0) == (variant == "head")


def test_bad_configs_and_a_missing_data_file_fail_clearly(tmp_path):
  def set_field(name, value):
    def mutate(config):
      config.text_quality[name] = value
    return mutate

  def no_fef_rows(config):
    config.text_quality.fef_options.bidirectional = ()
  for mutate, message in ((set_field("models", ("causal",)), "models"),
                          (set_field("modes", ("infill",)), "modes"),
                          (set_field("num_samples", 1), "num_samples"),
                          (no_fef_rows, "fef_options"),
                          (set_field("prefix_length", 12), "multiple of block_length")):
    bad = _tiny_config(tmp_path)
    mutate(bad)
    with pytest.raises(ValueError, match=message):
      text_experiment.run(bad, str(tmp_path / "bad"), progress=False)
  config = _tiny_config(tmp_path)
  config.data.path = str(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    text_experiment.run(config, str(tmp_path / "run"), progress=False)


def test_the_judge_is_trained_causally_and_refuses_text_of_another_tokenizer(tmp_path):
  config = _tiny_config(tmp_path)
  judge_config = text_models.training_config(config, text_models.JUDGE)
  workdir = str(tmp_path / "judge")
  out = run.train(judge_config, workdir, progress=False)
  assert "eval_nll_bits" in out["metrics"] and "eval_elbo_bits" not in out["metrics"]
  restored = run.restore_trained(judge_config, workdir)
  fingerprint = restored["source"].tokenizer.fingerprint()
  judge = text_models.as_judge(restored, fingerprint)
  rows = restored["source"].eval_arrays["tokens"][:3]
  nll = judge_lib.mean_nll(judge.logits_fn, rows, judge.vocab_size, 1)
  assert nll.shape == (3,) and np.isfinite(nll).all()
  other = tokenizers.BpeTokenizer.train([SHAKESPEARE.read_text()[:5000]], 300).fingerprint()
  with pytest.raises(judge_lib.TokenizerMismatchError, match=f"{fingerprint}.*{other}"):
    text_models.as_judge(restored, other)


@pytest.mark.slow
def test_tiny_run_writes_every_file_with_every_sampler_row(tmp_path):
  overrides = [f"--config.data.path={_tiny_corpus(tmp_path)}", "--config.data.length=32",
               "--config.model.d_model=32", "--config.model.num_layers=1",
               "--config.model.num_heads=2", "--config.model.mlp_dim=64",
               "--config.batch_size=8", "--config.eval_batch_size=16", "--config.log_every=2",
               "--config.eval_every=4", "--config.optimizer.total_steps=4",
               "--config.optimizer.warmup_steps=1", "--config.checkpoint.every=4",
               "--config.text_quality.num_samples=4", "--config.text_quality.batch_size=2",
               "--config.text_quality.prefix_length=16", "--config.text_quality.block_length=8",
               f"--config.text_quality.budgets={_BUDGETS}",
               *(f"--config.text_quality.fef_options.{k}={v}" for k, v in _FEF.items())]
  workdir = tmp_path / "run"
  done = subprocess.run([sys.executable, "-m", "experiments.text_quality",
                         f"--workdir={workdir}", *overrides], cwd=REPO, capture_output=True,
                        text=True, timeout=1500)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.loads((workdir / "text_quality.json").read_text())
  table = (workdir / "text_quality.md").read_text()
  assert (workdir / "text_quality.png").stat().st_size > 0
  info = json.loads((workdir / "text_quality_info.json").read_text())
  assert info["train_steps"] == {"judge": 4, "bidirectional": 4, "block_causal": 4}
  assert [r["mode"] for r in rows if r["sampler"] == "data"] == list(text_quality.MODES)
  for mode, generated in (("unconditional", 32), ("prefix", 16)):
    for model in ("bidirectional", "block_causal"):
      group = [r for r in rows if (r["model"], r["mode"]) == (model, mode)]
      expected = text_quality.default_samplers(model, generated, _BUDGETS, _FEF[model], 8)
      assert [r["sampler"] for r in group] == list(expected)
      assert f"**{model}, {mode}**" in table
      for row in group:
        assert f"`{row['sampler']}`" in table
        assert row["n"] == 4 and row["tokens"] == generated and row["nfe"] >= 1
        assert row["judge_nll_low"] <= row["judge_nll"] <= row["judge_nll_high"]
        assert row["entropy"] > 0 and row["seconds_per_token"] > 0
        assert (row["p_value"] is None) == (row["sampler"] == row["reference"])
        assert len(row["examples"]) == 3 and all(isinstance(t, str) for t in row["examples"])
  fef_rows = [r for r in rows if r["sampler"].startswith("fef")]
  assert len(fef_rows) == 2 * (1 + 2) and all(r["exact"] for r in fef_rows)
  assert ("Equal calls" in table) == bool(text_quality.equal_call_gaps(rows))
  assert "written:" in done.stdout
