"""LLaDA and Dream in Flax (fef_jax.models.hf) against `transformers`, sampling, and a device mesh.

Tiny random checkpoints (tests/hf_reference.py) are loaded both by our loader
and by the `transformers` reference (LlamaForCausalLM for LLaDA,
Qwen2ForCausalLM for Dream, run bidirectionally); logits must agree at every
valid position of left-padded batches.
"""
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fef_jax as fj
from fef_jax import api
from fef_jax.models import hf
from tests import hf_reference as ref
from tests import roundoff

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    "llada-gqa": (ref.make_llada, {}),
    "llada-tied-mha": (ref.make_llada, {"weight_tying": True, "n_kv_heads": None}),
    "dream-gqa": (ref.make_dream, {}),
    "dream-tied-mha": (ref.make_dream, {"tie_word_embeddings": True,
                                        "num_key_value_heads": 4}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """name -> (directory, transformers reference model)."""
  made = {}
  for name, (make, overrides) in VARIANTS.items():
    directory = str(tmp_path_factory.mktemp(name))
    model, _ = make(directory, seed=len(made), **overrides)
    made[name] = (directory, model)
  return made


def _logits(model, tokens, valid_fn):
  return np.asarray(jax.jit(model.logits_fn(valid_fn))(jnp.asarray(tokens)))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logits_match_transformers_on_left_padded_batches(name, checkpoints):
  directory, reference = checkpoints[name]
  model = hf.load(directory)
  valid_fn = hf.left_padding_valid_fn(model.pad_id)
  tokens = ref.left_padded_tokens(model.pad_id, model.mask_id, seed=1)
  valid = np.asarray(valid_fn(tokens))
  assert not valid[1:, 0].any() and valid.sum() < valid.size  # rows 1, 2 are padded

  ours = _logits(model, tokens, valid_fn)
  raw = ref.reference_logits(reference, tokens, valid)
  # Dream's denoiser logits at position i are its raw output at i - 1.
  expected = np.concatenate([raw[:, :1], raw[:, :-1]], axis=1) if name.startswith("dream") else raw
  assert ours.dtype == np.float32 and ours.shape == raw.shape
  # Two float32 implementations (XLA, PyTorch) of one network: round-off only.
  bound = roundoff.two_pass_bound(roundoff.network_chain(model.config, tokens.shape[1]),
                                  expected[valid])
  np.testing.assert_allclose(ours[valid], expected[valid], atol=bound, rtol=0)
  assert np.isfinite(ours).all()  # padding positions too


def test_mask_and_special_ids_come_from_config(checkpoints):
  llada = hf.load(checkpoints["llada-gqa"][0])
  dream = hf.load(checkpoints["dream-gqa"][0])
  assert (llada.architecture, dream.architecture) == ("llada", "dream")
  assert llada.tokenizer.token_to_id("<|mdm_mask|>") == llada.mask_id
  assert dream.tokenizer.token_to_id("<|mask|>") == dream.mask_id
  assert llada.eos_id == llada.pad_id == llada.tokenizer.token_to_id("<|endoftext|>")
  assert llada.logits_fn(hf.left_padding_valid_fn(3)) is llada.logits_fn(
      hf.left_padding_valid_fn(3))  # equal valid_fns share one Denoiser (one compile)


@pytest.mark.parametrize("name", ["llada-gqa", "dream-gqa"])
def test_checkpoints_of_one_network_share_a_compiled_sampler(name, checkpoints):
  # `fj.sample` compiles the denoiser's structure and takes its parameters as arguments:
  # a second load (new arrays, the same network) splits into the same static part.
  denoiser = hf.load(checkpoints[name][0]).logits_fn(hf.left_padding_valid_fn(3))
  definition, leaves = api.split_denoiser(denoiser)
  assert len(leaves) == len(jax.tree.leaves(denoiser.params)) > 0
  again = hf.load(checkpoints[name][0]).logits_fn(hf.left_padding_valid_fn(3))
  assert again is not denoiser and api.split_denoiser(again)[0] == definition


def test_padding_is_invisible_to_valid_positions(checkpoints):
  """A left-padded row gives the logits of the same row unpadded (LLaDA: all positions)."""
  model = hf.load(checkpoints["llada-gqa"][0])
  valid_fn = hf.left_padding_valid_fn(model.pad_id)
  tokens = ref.left_padded_tokens(model.pad_id, model.mask_id, seed=2)
  padded = _logits(model, tokens[2:], valid_fn)[0, 2:]
  unpadded = _logits(model, tokens[2:, 2:], valid_fn)[0]
  # Two passes of different lengths: equal up to round-off.
  bound = roundoff.two_pass_bound(roundoff.network_chain(model.config, tokens.shape[1]),
                                  unpadded)
  np.testing.assert_allclose(padded, unpadded, atol=bound, rtol=0)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_compute_stays_close_to_float32(param_dtype, checkpoints):
  directory = checkpoints["dream-gqa"][0]
  exact = hf.load(directory)
  fast = hf.load(directory, dtype=jnp.bfloat16, param_dtype=param_dtype)
  assert {leaf.dtype for leaf in jax.tree.leaves(fast.params)} == {jnp.dtype(param_dtype)}
  valid_fn = hf.left_padding_valid_fn(exact.pad_id)
  tokens = ref.left_padded_tokens(exact.pad_id, exact.mask_id, seed=3)
  valid = np.asarray(valid_fn(tokens))
  want, got = _logits(exact, tokens, valid_fn), _logits(fast, tokens, valid_fn)
  assert got.dtype == np.float32
  bound = (roundoff.gamma(roundoff.bf16_roundings(exact.config.num_layers), roundoff.U_BF16)
           * max(1.0, float(np.abs(want[valid]).max())))
  assert np.abs(got - want)[valid].max() <= bound, bound


def _prompt_then_masks(model, prompt_length=4, answer_length=4):
  """Left-padded prompts of lengths 4, 3, 2 followed by `answer_length` masks."""
  prompts = ref.left_padded_tokens(model.pad_id, model.mask_id, seed=4, length=prompt_length)
  prompts[prompts == model.mask_id] = 9  # prompts hold no masks
  masks = np.full((prompts.shape[0], answer_length), model.mask_id, np.int32)
  return np.concatenate([prompts, masks], axis=1)


@pytest.mark.parametrize("name,method,options", [
    ("llada-gqa", "fef", {"block_length": 2, "window": 2}),
    ("llada-gqa", "confidence", {"block_length": 2, "steps": 4, "temperature": 0.0}),
])
def test_sampling_end_to_end(name, method, options, checkpoints):
  model = hf.load(checkpoints[name][0])
  tokens = _prompt_then_masks(model)
  result = fj.sample(model.logits_fn(hf.left_padding_valid_fn(model.pad_id)), tokens,
                     jax.random.key(0), method, mask_id=model.mask_id, **options)
  out = np.asarray(result.tokens)
  np.testing.assert_array_equal(out[:, :4], tokens[:, :4])
  answer = out[:, 4:]
  assert ((answer >= 0) & (answer < model.config.vocab_size) & (answer != model.mask_id)).all()
  assert isinstance(model.tokenizer.decode(answer[0]), str)


def test_loading_onto_a_mesh_of_8_devices_gives_the_same_logits(tmp_path):
  """Subprocess with 8 simulated CPU devices: params split over fsdp=4, logits unchanged;
  sampling with rows split over data=2 draws what one device draws."""
  ref.make_llada(str(tmp_path), shards=2)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "hf_reference.py"),
                         str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["param_max_abs_diff"] == 0.0, report
  # The partitioned program may sum in another order: round-off of two passes.
  config = types.SimpleNamespace(**report["network"])
  bound = roundoff.two_pass_bound(roundoff.network_chain(config, report["length"]),
                                  report["max_abs_logit"])
  assert report["max_abs_diff"] <= bound, (bound, report)
  split = [spec for spec in report["sharded_specs"] if "fsdp" in spec]
  # Every matrix is split (7 per block, 2 blocks, embedding, unembedding); all live on 8 devices.
  assert len(split) == 2 * 7 + 2, report["sharded_specs"]
  assert set(report["devices_per_param"]) == {8}, report
  # The compiled sampler takes the parameters in their shardings, not gathered.
  assert report["program_param_specs"] == report["sharded_specs"]
  tokens, prompt = np.array(report["tokens"]), np.array(report["prompt"])
  masked = prompt == report["mask_id"]
  np.testing.assert_array_equal(tokens[~masked], prompt[~masked])
  assert (tokens != report["mask_id"]).all()
  # Rows over `data`, parameters over `fsdp`: the draws of the single-device sampler.
  # Logits differ by round-off only, which moves a Gumbel-max draw only where two
  # perturbed logits tie within it.
  np.testing.assert_array_equal(tokens, report["tokens_single_device"])
  assert report["batches_split_equal_single"]  # generate's batches over all 8 devices
  assert "batch_size=6 cannot be split over the 8 devices" in report["indivisible_error"]
