"""The sampler comparison: grids, configs, Pareto front logic, and the experiment end to end on
tiny models (bidirectional; block-causal with a head over the exact cache)."""
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import compare as compare_config
from experiments.configs import compare_blocks4 as compare_blocks4_config
from experiments.configs import compare_long as compare_long_config
from experiments.configs import compare_permutation as compare_permutation_config
from fef_jax.data import synthetic
from fef_jax.eval import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_grid_has_every_family_the_issue_asks_for():
  specs = compare.default_samplers(answer_length=8)
  assert specs[:2] == (compare.REFERENCE, f"{compare.REFERENCE}:select=position")
  for expected in ("fef:steps=1,window=2", "confidence:steps=8", "confidence:steps=4",
                   "confidence:steps=2",
                   "threshold:threshold=0.9", "eb:gamma=0.1", "ancestral:steps=4",
                   "random_sizes:steps=4", "fef:steps=1,window=16",
                   "fef:mode=joint_then_remask,steps=2,window=4",
                   "fef:mode=joint_then_remask,steps=4,window=16",
                   "fef:block_length=4,window=4,cache=approximate",
                   "first_hitting:select=dilated", "fef:steps=1,order=dilated,window=4",
                   "confidence:steps=4,select=dilated", "confidence:steps=2,select=dilated",
                   "fef:steps=1,order=dilated,window=8"):
    assert expected in specs
  dilated = [s for s in compare.default_samplers(10) if "order=dilated" in s]
  assert dilated == [f"fef:steps=1,order=dilated,window={w}" for w in (4, 5, 8)]
  assert not any("cache" in spec for spec in compare.default_samplers(8,
                                                                      approximate_cache=False))
  assert not any("head" in spec for spec in specs)
  cached = compare.default_samplers(8, approximate_cache=False, exact_cache_block=4)
  assert [s for s in cached if "cache" in s] == [
      f"fef:block_length=4,cache=exact,window={w}" for w in (1, 2, 4)]
  assert compare.is_exact_one_token("fef:block_length=4,cache=exact,window=1")
  with_head = compare.default_samplers(8, head=True)
  assert {"fef:steps=1,window=4,drafter=head", "fef:steps=1,window=4,verifier=head"} <= set(
      with_head)


def test_block_causal_head_grid_runs_the_exact_cache_with_marginal_and_head_drafts():
  assert compare.cached_samplers(answer_length=10, block_length=2) == (
      "first_hitting", "first_hitting:select=position", "first_hitting:select=dilated",
      "first_hitting:select=parity",
      "confidence:steps=10", "confidence:steps=2,select=dilated", "fef:steps=1,window=2",
      "fef:steps=1,window=2,drafter=head",
      "fef:steps=1,order=dilated,window=5",
      "fef:steps=1,order=parity,window=5,cache=prefix",
      "fef:block_length=2,cache=exact,window=1",
      "fef:block_length=2,cache=exact,window=2",
      "fef:block_length=2,cache=exact,window=2,drafter=head")
  wide = compare.cached_samplers(16, 8)
  assert [s for s in wide if "cache=exact" in s] == ["fef:block_length=8,cache=exact,window=1"] + [
      f"fef:block_length=8,cache=exact,window={w}{drafts}" for w in (2, 4, 8)
      for drafts in ("", ",drafter=head")]
  assert [s for s in compare.cached_samplers(8, 2) if compare.is_exact_one_token(s)] == [
      "first_hitting", "first_hitting:select=position", "first_hitting:select=dilated",
      "first_hitting:select=parity", "fef:block_length=2,cache=exact,window=1"]


def test_blocks4_config_pads_the_prompt_to_whole_blocks_of_4():
  config = compare_blocks4_config.get_config()
  compare.check_config(config)
  cached = compare.training_config(config, "block_causal_head")
  assert cached.model.block_length == 4
  specs = compare.samplers_for(cached, "block_causal_head", 12)
  assert "fef:block_length=4,cache=exact,window=4,drafter=head" in specs


def test_permutation_config_compares_exact_fef_with_the_dilated_schedule():
  config = compare_permutation_config.get_config()
  compare.check_config(config)
  task = synthetic.Permutation(**config.data.task_kwargs)
  assert task.answer_length == 8
  specs = compare.samplers_for(compare.training_config(config, "bidirectional"),
                               "bidirectional", task.answer_length)
  assert {"confidence:steps=4,select=dilated", "confidence:steps=2,select=dilated",
          "fef:steps=1,order=dilated,window=4", "first_hitting:select=dilated"} <= set(specs)
  config.compare.models = compare.MODELS  # blocks of 2 do not divide the 9-token prompt
  with pytest.raises(ValueError, match="must divide"):
    compare.check_config(config)


def test_long_config_holds_the_dilated_window_of_its_30_token_answers():
  config = compare_long_config.get_config()
  compare.check_config(config)
  task = synthetic.PairSum(**config.data.task_kwargs)
  assert (task.prompt_length, task.answer_length) == (16, 30)
  cached = compare.training_config(config, "block_causal_head")
  specs = compare.samplers_for(cached, "block_causal_head", task.answer_length)
  # The 15 first digits (even positions, one parity) in one round; the references.
  assert {"fef:steps=1,order=dilated,window=15", "first_hitting:select=dilated",
          "fef:steps=1,order=parity,window=15,cache=prefix", "first_hitting:select=parity",
          "fef:block_length=2,cache=exact,window=1",
          "fef:block_length=2,cache=exact,window=2"} <= set(specs)
  assert tuple(config.compare.batch_sizes) == (1,)


def test_default_config_compares_both_models_on_block_aligned_pairs():
  config = compare_config.get_config()
  compare.check_config(config)
  assert config.compare.models == compare.MODELS
  bidirectional = compare.training_config(config, "bidirectional")
  assert (bidirectional.model.attention, bidirectional.model.head_layers) == ("bidirectional", 0)
  assert bidirectional.loss.head_weight == 0
  cached = compare.training_config(config, "block_causal_head")
  assert (cached.model.attention, cached.model.block_length, cached.model.head_layers) == (
      "block_causal", 2, 1)
  assert cached.loss.head_weight == 1.0
  assert cached.optimizer.total_steps == bidirectional.optimizer.total_steps
  assert compare.samplers_for(cached, "block_causal_head", 10) == compare.cached_samplers(10, 2)
  assert compare.samplers_for(bidirectional, "bidirectional", 10) == compare.default_samplers(10)
  config.compare.block_length = 4  # the 6-token prompt is not a whole number of blocks
  with pytest.raises(ValueError, match="block_length=4 must divide"):
    compare.check_config(config)
  config.compare.models = ("bidirectional",)
  compare.check_config(config)
  config.compare.models = ("causal",)
  with pytest.raises(ValueError, match="subset"):
    compare.check_config(config)


def test_pareto_front_keeps_exactly_the_undominated_rows():
  rows = [{"sampler": "a", "accuracy": 0.9, "seconds_per_token": 1.0},
          {"sampler": "b", "accuracy": 0.8, "seconds_per_token": 0.5},
          {"sampler": "c", "accuracy": 0.7, "seconds_per_token": 0.6},  # dominated by b
          {"sampler": "d", "accuracy": 0.9, "seconds_per_token": 2.0}]  # dominated by a
  assert compare.pareto_front(rows) == ["a", "b"]


def test_exact_one_token_decoders_are_recognised():
  exact = ["first_hitting", "first_hitting:select=position", "first_hitting:select=entropy",
           "first_hitting:select=dilated", "fef:window=1",
           "fef:block_length=4,window=1,cache=exact"]
  inexact_or_parallel = ["first_hitting:select=confidence", "confidence:steps=8", "fef",
                         "fef:window=2", "fef:block_length=4,window=1,cache=approximate",
                         "fef:window=1,verifier=head"]
  assert all(compare.is_exact_one_token(spec) for spec in exact)
  assert not any(compare.is_exact_one_token(spec) for spec in inexact_or_parallel)


def test_comparison_needs_the_reference():
  task = synthetic.PairSum()
  with pytest.raises(ValueError, match="reference"):
    compare.compare(lambda x: x, task, np.zeros((1, 2), np.int32),
                    ["fef", "first_hitting:select=confidence"], None)


def test_samples_and_stats_do_not_depend_on_how_the_samplers_take_turns():
  task = synthetic.PairSum(pairs=2)
  prompts, _ = task.sample(np.random.default_rng(0), 7)
  # A denoiser whose logits depend on the tokens, so that samples depend on the keys.
  table = jax.random.normal(jax.random.key(0), (task.vocab_size + 1, task.vocab_size))

  def logits_fn(tokens_NxL):
    return jnp.cumsum(table[tokens_NxL], axis=1)

  specs = ["first_hitting", "fef:window=2"]
  runs = [compare.compare(logits_fn, task, prompts, specs, jax.random.key(1), batch_size=2,
                          parts=parts) for parts in (1, 3)]
  for one, three in zip(*runs):
    assert one["sampler"] == three["sampler"]
    for field in ("accuracy", "nfe", "sequences", "rounds", "drafts_accepted"):
      assert one[field] == three[field], field
    assert three["seconds"] > 0 and len(three["part_seconds"]) == 3
    # The whole run's speed-up is a weighted mean of the parts' speed-ups.
    assert three["speedup_low"] <= three["speedup"] * (1 + 1e-9)
    assert three["speedup"] <= three["speedup_high"] * (1 + 1e-9)
    assert one["speedup_low"] == pytest.approx(one["speedup"]) == one["speedup_high"]
  reference = next(r for r in runs[1] if r["sampler"] == r["reference"])
  assert reference["speedup_low"] == reference["speedup_high"] == 1.0
  table = compare.format_table(runs[1])
  assert f"({reference['speedup_low']:.2f}-{reference['speedup_high']:.2f})" in table
  assert "(" not in compare.format_table(runs[0]).split("\n")[-1].split("|")[-2]
  with pytest.raises(ValueError, match="parts"):
    compare.compare(logits_fn, task, prompts, specs, jax.random.key(1), parts=0)


# The block-causal model's rows in the end-to-end test: the exact one-token references
# uncached and over the cache (both exact, so the speed-up reference is contested),
# and the head's drafts uncached and over the cache. The full grid (8 rows) would add
# half a minute of compiling to a CI budget that is nearly full;
# test_block_causal_head_grid_runs_the_exact_cache_with_marginal_and_head_drafts
# checks its contents.
_CACHED_ROWS = ("first_hitting", "fef:steps=1,window=2,drafter=head",
                "fef:block_length=2,cache=exact,window=1",
                "fef:block_length=2,cache=exact,window=2,drafter=head")


@pytest.mark.slow
def test_compare_experiment_runs_end_to_end_with_every_sampler_row(tmp_path):
  overrides = ["--config.optimizer.total_steps=30", "--config.optimizer.warmup_steps=5",
               "--config.log_every=10", "--config.eval_every=30", "--config.checkpoint.every=30",
               "--config.sample.every=0", "--config.compare.num_prompts=16",
               "--config.compare.batch_sizes=(1, 16)", "--config.model.num_layers=1",
               "--config.model.d_model=32", "--config.model.mlp_dim=64",
               "--config.data.num_examples=2000", "--config.eval_batch_size=64",
               f"--config.compare.cached_samplers={_CACHED_ROWS}"]
  done = subprocess.run([sys.executable, "-m", "experiments.compare", f"--workdir={tmp_path}",
                         *overrides], cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "comparison.json").read_text())
  rows = result["rows"]
  grids = {"bidirectional": list(compare.default_samplers(10)),
           "block_causal_head": list(_CACHED_ROWS)}
  assert [(r["model"], r["batch_size"], r["sampler"]) for r in rows] == [
      (model, batch_size, spec) for model, grid in grids.items() for batch_size in (1, 16)
      for spec in grid]
  assert result["info"]["models"]["block_causal_head"]["head_layers"] == 1
  assert result["info"]["host"]["usable_cpus"] >= 1  # CPU timings depend on the cores used
  for model in grids:
    assert result["info"]["models"][model]["train_steps"] == 30
    assert (tmp_path / model / "checkpoints").is_dir()  # each model trains in its own run
  table = (tmp_path / "comparison.md").read_text()
  assert table.count("| sampler |") == 4
  assert (tmp_path / "comparison.png").stat().st_size > 0
  for (model, grid), batch_size in itertools.product(grids.items(), (1, 16)):
    assert f"Model `{model}`, batch {batch_size} (" in table
    group = [r for r in rows if r["model"] == model and r["batch_size"] == batch_size]
    assert all(f"`{r['sampler']}`" in table for r in group)
    for row in group:
      assert row["n"] == 16
      assert 0 <= row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
      assert row["tokens"] == 10 and row["nfe"] >= 1
      assert row["bare_call_ms"] > 0 and row["ms_per_call"] > 0
      assert row["call_overhead"] == pytest.approx(row["ms_per_call"] / row["bare_call_ms"])
    # The speed-ups are over the fastest exact one-token decoder of the same model and
    # batch size (the cached one-token decoder is one).
    exact = [r for r in group if compare.is_exact_one_token(r["sampler"])]
    assert len(exact) == (3 if model == "bidirectional" else 2)  # + the dilated one
    fastest = min(exact, key=lambda r: r["seconds_per_token"])
    assert {r["reference"] for r in group} == {fastest["sampler"]}
    assert fastest["speedup"] == 1.0 and all(r["speedup"] <= 1.0 for r in exact)
    for row in group:
      assert row["speedup"] == pytest.approx(fastest["seconds_per_token"]
                                             / row["seconds_per_token"])
    if batch_size == 1:  # one row per batch: the per-call time is exact
      assert fastest["ms_per_call"] == pytest.approx(
          1e3 * fastest["seconds"] / (16 * fastest["nfe"]))
  for row in rows:
    if row["sampler"] == "fef:block_length=2,cache=exact,window=1":
      # One initial call (it also caches the prompt for the first block's window),
      # then one block-local round per token (window 1); at blocks of 2 each round
      # evaluates the span [previous block, window, next block] (3S = 6 positions) and
      # so also moves the cache into the next block (`cache.fused_rounds`): no refresh
      # calls. In sequences: the initial L positions and 3S per round, rounded up.
      assert row["rounds"] == 10
      assert row["nfe"] == row["tokens"] + 1 == 11
      assert row["sequences"] == -(-(16 + 3 * 2 * 10) // 16) == 5
    elif compare.is_exact_one_token(row["sampler"]):
      assert row["nfe"] == 10  # first-hitting: one whole-sequence call per token
