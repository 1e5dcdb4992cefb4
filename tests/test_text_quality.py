"""Text quality judged by a causal model: the judge's NLL, repetition measures, the
two-sample test, the sampler grid, and the harness on an exact oracle with an exact judge."""
import dataclasses
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats

import fef_jax as fj
from fef_jax.data import text
from fef_jax.eval import diversity
from fef_jax.eval import judge as judge_lib
from fef_jax.eval import text_quality
from fef_jax.eval import two_sample
from fef_jax.models import transformer
from fef_jax.train import data_source

DATA_DIR = pathlib.Path(os.environ.get(
    "FEF_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def _bigram_log_probs(vocab_size, seed=0):
  """float64[V, V]: log P(next = b | current = a), an asymmetric random table."""
  table = np.random.default_rng(seed).dirichlet(np.ones(vocab_size) * 0.5, size=vocab_size)
  return np.log(table)


def _bigram_logits_fn(log_probs_VxV):
  """A causal model by construction: the logits at `i` depend on `x[i]` only."""
  table = jnp.asarray(log_probs_VxV, jnp.float32)
  return lambda tokens_NxL: table[tokens_NxL]


@dataclasses.dataclass(frozen=True)
class HandJudge:
  """What the harness reads of a judge, with a hand-built causal model that records
  every input it is given."""
  logits_fn: object
  vocab_size: int


def test_judge_nll_equals_a_direct_per_token_sum():
  vocab = 5
  log_probs = _bigram_log_probs(vocab)
  tokens = np.random.default_rng(1).integers(0, vocab, size=(7, 9))
  scored_from = 3
  direct = np.array([sum(-log_probs[row[i - 1], row[i]] for i in range(scored_from, 9))
                     / (9 - scored_from) for row in tokens])
  # batch_size 3 leaves a last chunk of one row, padded: the padding must not leak.
  got = judge_lib.mean_nll(_bigram_logits_fn(log_probs), tokens, vocab, scored_from,
                           batch_size=3)
  np.testing.assert_allclose(got, direct, rtol=1e-5)
  per_token = judge_lib.token_nll(_bigram_logits_fn(log_probs), tokens, vocab, batch_size=4)
  assert np.isnan(per_token[:, 0]).all()
  np.testing.assert_allclose(per_token[0, 1], -log_probs[tokens[0, 0], tokens[0, 1]],
                             rtol=1e-5)


def test_judge_refuses_masks_and_bad_positions():
  vocab = 4
  logits_fn = _bigram_logits_fn(_bigram_log_probs(vocab))
  tokens = np.zeros((2, 6), np.int32)
  tokens[1, 4] = vocab  # the mask id of the project's tokenizers is V
  with pytest.raises(ValueError, match=r"token id 4 at \[1, 4\].*mask"):
    judge_lib.mean_nll(logits_fn, tokens, vocab, 1)
  with pytest.raises(ValueError, match="scored_from"):
    judge_lib.mean_nll(logits_fn, np.zeros((2, 6), np.int32), vocab, 0)
  with pytest.raises(ValueError, match="int"):
    judge_lib.mean_nll(logits_fn, np.zeros((2, 6)), vocab, 1)


def test_a_judge_must_be_causal():
  config = transformer.TransformerConfig(vocab_size=8, mask_id=8, max_length=8, d_model=16,
                                         num_layers=1, num_heads=2, mlp_dim=32)
  with pytest.raises(ValueError, match="causal"):
    judge_lib.Judge(transformer.Transformer(config), None, "byte")
  causal = dataclasses.replace(config, attention="block_causal", block_length=1)
  judge = judge_lib.Judge(transformer.Transformer(causal),
                          transformer.init_params(causal, jax.random.key(0)), "byte")
  # Causal: changing a later token leaves the scores of the earlier ones unchanged.
  tokens = np.random.default_rng(0).integers(0, 8, size=(1, 8))
  later = tokens.copy()
  later[0, 5] = (later[0, 5] + 1) % 8
  before = judge_lib.token_nll(judge.logits_fn, tokens, 8)
  after = judge_lib.token_nll(judge.logits_fn, later, 8)
  np.testing.assert_array_equal(before[0, 1:5], after[0, 1:5])
  assert not np.allclose(before[0, 5:7], after[0, 5:7])


def test_another_tokenizer_is_refused_naming_both():
  with pytest.raises(judge_lib.TokenizerMismatchError,
                     match="byte-V258.*bpe-V300.*retrain|byte-V258.*bpe-V300.*train"):
    judge_lib.check_tokenizer("byte-V258-pad256-eos257-abc", "bpe-V300-pad0-eos1-def")
  judge_lib.check_tokenizer("byte-V258-pad256-eos257-abc", "byte-V258-pad256-eos257-abc")


def test_entropy_and_distinct_n_on_known_strings():
  def ids(text):
    return list(text.encode())
  assert diversity.unigram_entropy(ids("aaaa")) == 0.0
  assert diversity.unigram_entropy(ids("abab")) == pytest.approx(math.log(2))
  assert diversity.unigram_entropy(ids("abcd")) == pytest.approx(math.log(4))
  assert diversity.unigram_entropy(ids("aab")) == pytest.approx(
      -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
  assert diversity.distinct_n(ids("aaaa"), 2) == pytest.approx(1 / 3)
  assert diversity.distinct_n(ids("aaaa"), 3) == pytest.approx(1 / 2)
  assert diversity.distinct_n(ids("abab"), 2) == pytest.approx(2 / 3)  # ab, ba, ab
  assert diversity.distinct_n(ids("abcabc"), 3) == pytest.approx(3 / 4)  # abc, bca, cab, abc
  assert diversity.distinct_n(ids("abcd"), 2) == 1.0
  summary = diversity.summary(np.array([ids("aaaa"), ids("abcd")]))
  assert summary == pytest.approx({"entropy": math.log(4) / 2,
                                   "distinct_2": (1 / 3 + 1) / 2,
                                   "distinct_3": (1 / 2 + 1) / 2})
  with pytest.raises(ValueError, match="empty"):
    diversity.unigram_entropy([])
  with pytest.raises(ValueError, match="no 3-gram"):
    diversity.distinct_n([1, 2], 3)


def test_mann_whitney_u_matches_an_independent_implementation():
  rng = np.random.default_rng(0)
  for nx, ny in ((12, 20), (40, 33), (5, 60)):
    x = np.round(rng.normal(0.3, 1.0, nx), 1)  # rounding makes ties
    y = np.round(rng.normal(0.0, 1.0, ny), 1)
    ours = two_sample.mann_whitney_u(x, y)
    theirs = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic",
                                      use_continuity=True)
    assert ours.u == pytest.approx(theirs.statistic)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    assert ours.prob_greater == pytest.approx(theirs.statistic / (nx * ny))
  np.testing.assert_array_equal(two_sample.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])),
                                [3.5, 1.0, 3.5, 2.0])
  assert two_sample.mann_whitney_u([1.0, 1.0], [1.0, 1.0]).p_value == 1.0
  with pytest.raises(ValueError, match="NaN"):
    two_sample.mann_whitney_u([1.0, np.nan], [0.0])
  with pytest.raises(ValueError, match="sizes"):
    two_sample.mann_whitney_u([], [0.0])


def test_mann_whitney_u_holds_its_level_and_detects_a_shift():
  rng = np.random.default_rng(1)
  trials, n = 600, 30
  null = np.mean([two_sample.mann_whitney_u(rng.normal(size=n), rng.normal(size=n)).p_value
                  < 0.05 for _ in range(trials)])
  # 5% level; 4.3 binomial standard errors either side (sd = sqrt(.05 .95 / 600) = 0.0089).
  assert 0.012 < null < 0.088
  shifted = np.mean([two_sample.mann_whitney_u(rng.normal(1.0, 1.0, n),
                                               rng.normal(size=n)).p_value < 0.05
                     for _ in range(200)])
  assert shifted > 0.9  # power ~0.96 at one standard deviation, n = 30 per sample


def test_default_grid_has_the_references_every_baseline_budget_and_fef_windows():
  specs = text_quality.default_samplers("bidirectional", 24, (4, 8, 64),
                                        ("window=2", "order=random,window=4"), 8)
  assert specs[:2] == ("first_hitting", "first_hitting:select=position")
  for steps in (4, 8, 24):  # 64 > 24 generated tokens becomes the full length
    assert {f"ancestral:steps={steps}", f"confidence:steps={steps}"} <= set(specs)
  assert "random_sizes:steps=8" in specs and "random_sizes:steps=24" not in specs
  assert {"fef:steps=1,window=2", "fef:steps=1,order=random,window=4"} <= set(specs)
  assert len(set(specs)) == len(specs) == 2 + 8 + 2
  only_random = text_quality.default_samplers("bidirectional", 24, (8,),
                                              ("order=random,window=4",), 8)
  assert "first_hitting:select=position" not in only_random
  cached = text_quality.default_samplers("block_causal", 24, (8,), ("window=4",), 8)
  assert cached[0] == "fef:block_length=8,cache=exact,window=1"
  assert "confidence:block_length=8,steps=8" in cached
  assert "fef:block_length=8,cache=exact,window=4" in cached
  assert "fef:steps=1,drafter=head,window=4" in text_quality.default_samplers(
      "head", 24, (8,), ("window=4",), 8)
  exact = [s for s in specs + cached if text_quality.is_exact(s)]
  assert all(s.startswith(("fef", "first_hitting")) for s in exact)
  assert not text_quality.is_exact("fef:block_length=8,cache=approximate,window=4")
  with pytest.raises(ValueError, match="variant"):
    text_quality.default_samplers("causal", 24, (8,), ("window=4",), 8)


def test_each_row_is_tested_against_the_one_token_decoder_of_its_order():
  def reference(variant, spec):
    return text_quality.reference_for(variant, spec, 8)
  assert reference("bidirectional", "fef:steps=1,window=4") == "first_hitting:select=position"
  assert reference("bidirectional", "fef:steps=1,order=random,window=4") == "first_hitting"
  assert reference("bidirectional", "confidence:steps=8") == "first_hitting"
  assert reference("head", "fef:steps=1,drafter=head,window=4") == (
      "first_hitting:select=position")
  cached = "fef:block_length=8,cache=exact,window=1"
  assert reference("block_causal", "fef:block_length=8,cache=exact,window=4") == cached
  assert reference("block_causal", cached) == cached
  assert reference("block_causal", "ancestral:block_length=8,steps=8") == cached
  assert reference("block_causal", "fef:block_length=8,cache=exact,order=random,window=4") == (
      "first_hitting:block_length=8")
  assert reference("bidirectional", "fef:steps=1,order=dilated,window=4") == (
      "first_hitting:select=dilated")
  assert reference("block_causal", "fef:block_length=8,cache=exact,order=dilated,window=4") == (
      "first_hitting:block_length=8,select=dilated")
  assert reference("bidirectional", "fef:steps=1,order=parity,window=4") == (
      "first_hitting:select=parity")
  assert reference("block_causal", "fef:block_length=8,cache=exact,order=parity,window=4") == (
      "first_hitting:block_length=8,select=parity")
  # One set for the whole row over one drafted state per round: a whole-row reference.
  assert reference("block_causal", "fef:steps=1,order=parity,window=8,cache=prefix") == (
      "first_hitting:select=parity")
  assert reference("block_causal", "fef:steps=1,window=8,cache=prefix") == (
      "first_hitting:select=position")
  grid = text_quality.default_samplers("block_causal", 32, (8,),
                                       ("order=parity,window=8,cache=prefix",), 16)
  assert grid[-1] == "fef:steps=1,order=parity,window=8,cache=prefix"
  assert "first_hitting:select=parity" in grid


def test_equal_call_gaps_take_the_cheapest_baseline_with_at_least_fef_calls():
  def row(sampler, nfe, nll, exact=False):
    return {"model": "m", "mode": "prefix", "sampler": sampler, "nfe": nfe,
            "judge_nll": nll, "exact": exact, "entropy": 2.0 - nll}
  rows = [row("first_hitting", 24, 1.0, True), row("fef:steps=1,window=4", 10.5, 1.01, True),
          row("confidence:steps=8", 8, 2.0), row("confidence:steps=16", 16, 1.5),
          row("confidence:steps=24", 24, 1.2), row("ancestral:steps=8", 7.9, 2.2)]
  gaps = text_quality.equal_call_gaps(rows)
  assert [(g["baseline"], g["gap"]) for g in gaps] == [
      ("confidence:steps=16", pytest.approx(0.49))]  # ancestral never reaches 10.5 calls
  assert (gaps[0]["fef_entropy"], gaps[0]["baseline_entropy"]) == (
      pytest.approx(0.99), pytest.approx(0.5))


def _sticky_chain():
  return fj.oracles.MarkovChain.sticky(vocab_size=4, length=12, stay_prob=0.85)


def test_harness_on_an_exact_oracle_and_exact_judge_separates_exact_from_parallel():
  """With the chain itself as denoiser and its transition table as the judge, exact
  samplers' judge NLL has one distribution; sampling every token from its marginal in
  one step does not. The judge is never given a mask."""
  chain = _sticky_chain()
  seen = []
  table = jnp.log(jnp.asarray(chain.transition_HxH, jnp.float32))

  def judge_logits(tokens_NxL):
    seen.append(np.asarray(tokens_NxL))
    return table[tokens_NxL]
  judge = HandJudge(judge_logits, chain.vocab_size)
  held_out = np.asarray(jax.random.randint(jax.random.key(3), (400, chain.length), 0, 4))
  specs = ["first_hitting", "fef:steps=1,order=random,window=4", "confidence:steps=1"]
  for mode in text_quality.MODES:
    rows = text_quality.evaluate(chain.logits_fn, judge, held_out, specs,
                                 lambda spec: "first_hitting",
                                 jax.random.key(0), model="chain", mode=mode,
                                 prefix_length=4, mask_id=chain.mask_id, batch_size=200)
    by_name = {r["sampler"]: r for r in rows}
    assert by_name["fef:steps=1,order=random,window=4"]["p_value"] > 0.01
    assert by_name["confidence:steps=1"]["p_value"] < 1e-6
    assert by_name["confidence:steps=1"]["nll_diff"] > 0
    assert by_name["first_hitting"]["nfe"] == (12 if mode == "unconditional" else 8)
    for row in rows:
      assert row["judge_nll_low"] <= row["judge_nll"] <= row["judge_nll_high"]
      assert row["gen_ppl"] == pytest.approx(math.exp(row["judge_nll"]))
      assert row["n"] == 400 and row["seconds_per_token"] > 0
      assert not row["includes_compile"]
  assert seen and all((batch != chain.mask_id).all() for batch in seen)
  data, nll = text_quality.data_row(judge, held_out, "prefix", 4, batch_size=100)
  np.testing.assert_allclose(nll, judge_lib.mean_nll(judge_logits, held_out, 4, 4))
  assert data["judge_nll"] == pytest.approx(nll.mean()) and data["nfe"] == 0


def test_gsm8k_text_is_a_packed_corpus_of_questions_and_solutions():
  path = DATA_DIR / "gsm8k" / "test.jsonl"
  config = ml_collections.ConfigDict(dict(kind="gsm8k_text", path=str(path), length=128,
                                          eval_fraction=0.05, tokenizer="byte"))
  source = data_source.build(config, seed=0)
  tokenizer = source.tokenizer
  tokens = np.concatenate([source.arrays["tokens"], source.eval_arrays["tokens"]])
  assert tokens.shape[1] == 128 and source.arrays["maskable"].all()
  first = tokens.reshape(-1).tolist()
  end = first.index(tokenizer.eos_id)
  record = text.load_gsm8k(path)[0]
  assert tokenizer.decode(first[:end]) == f"Question: {record.question}\nAnswer: {record.answer}"
  assert source.fingerprint.startswith("gsm8k_text:tokenizer=byte-")
