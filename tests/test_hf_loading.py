"""Loading Hugging Face checkpoints (fef_jax.models.hf.loading) and their tokenizers.

Round trips: random weights -> safetensors in the checkpoint's naming (single
file, or 2 shards plus an index; float32 or bfloat16) -> our loader -> the
same values in the Flax tree. Broken checkpoints give a `CheckpointError`
naming the tensor or file. Tokenizer and chat templates match `transformers`.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from fef_jax.models import hf
from fef_jax.models.hf import dream
from fef_jax.models.hf import llada
from fef_jax.models.hf import loading
from tests import hf_reference as ref

BLOCK0 = "model.transformer.blocks.0."


@pytest.fixture(scope="module")
def llada_model():
  """The Llama reference behind tiny LLaDA checkpoints, and its config.json."""
  config = ref.llada_config()
  return ref.llama_reference(config), config


def _write_llada(directory, llada_model, edit=lambda tensors: tensors, **kwargs):
  model, config = llada_model
  tensors = edit(dict(ref.llada_tensors(model, config)))
  stored = ref.write_checkpoint(str(directory), config, tensors, **kwargs)
  ref.write_tokenizer(str(directory), ref.LLADA_SPECIALS, ref.LLADA_TEMPLATE,
                      "<|startoftext|>", "<|endoftext|>")
  return stored


def _param(params, path):
  for key in path:
    params = params[key]
  return params


def _assert_round_trip(model, specs, stored):
  assert sorted(spec.name for spec in specs) == sorted(stored)
  for spec in specs:
    want = stored[spec.name].T if spec.transpose else stored[spec.name]
    got = _param(model.params, spec.path)
    assert got.shape == want.shape, spec.name
    np.testing.assert_array_equal(np.asarray(got, np.float32), want, err_msg=spec.name)


def _abstract(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


def test_single_file_round_trip_gives_identical_params(tmp_path, llada_model):
  stored = _write_llada(tmp_path, llada_model)
  model = hf.load(tmp_path)
  _assert_round_trip(model, llada.tensor_specs(model.config), stored)
  # The loaded tree is exactly the tree the Flax network declares.
  declared = jax.eval_shape(model.network.init, jax.random.key(0),
                            jnp.zeros((1, 4), jnp.int32))["params"]
  assert _abstract(model.params) == _abstract(declared)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_sharded_bfloat16_round_trip_gives_identical_params(tmp_path, param_dtype):
  _, stored = ref.make_dream(str(tmp_path), shards=2, dtype=torch.bfloat16)
  index = json.loads((tmp_path / loading.INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) == 2
  model = hf.load(tmp_path, param_dtype=param_dtype)
  assert {leaf.dtype for leaf in jax.tree.leaves(model.params)} == {jnp.dtype(param_dtype)}
  # bf16 -> float32 and bf16 -> bf16 are both exact.
  _assert_round_trip(model, dream.tensor_specs(model.config), stored)


def _drop(name):
  def edit(tensors):
    del tensors[name]
    return tensors
  return edit


def _set(name, value):
  def edit(tensors):
    tensors[name] = value
    return tensors
  return edit


@pytest.mark.parametrize("edit,message", [
    (_drop(BLOCK0 + "up_proj.weight"), r"lacks tensor\(s\) 'model.transformer.blocks.0.up_proj"),
    (_set(BLOCK0 + "extra.weight", torch.zeros(3)),
     r"unexpected tensor\(s\) 'model.transformer.blocks.0.extra.weight'"),
    (_set(BLOCK0 + "q_proj.weight", torch.zeros(32, 31)),
     r"'model.transformer.blocks.0.q_proj.weight' has shape \[32, 31\].*expected \[32, 32\]"),
])
def test_missing_extra_and_misshapen_tensors_are_named(tmp_path, llada_model, edit, message):
  _write_llada(tmp_path, llada_model, edit)
  with pytest.raises(loading.CheckpointError, match=message):
    hf.load(tmp_path)


def test_missing_files_are_named(tmp_path, llada_model):
  _write_llada(tmp_path, llada_model, shards=2)
  os.remove(tmp_path / "model-00002-of-00002.safetensors")
  with pytest.raises(loading.CheckpointError, match="shard 'model-00002-of-00002.safetensors'"):
    hf.load(tmp_path)
  for name in os.listdir(tmp_path):
    if name.endswith(".safetensors") or name.endswith(".index.json"):
      os.remove(tmp_path / name)
  with pytest.raises(loading.CheckpointError, match="neither model.safetensors nor"):
    hf.load(tmp_path)
  os.remove(tmp_path / "config.json")
  with pytest.raises(loading.CheckpointError, match="config.json not found"):
    hf.load(tmp_path)


def test_truncated_file_is_rejected(tmp_path, llada_model):
  _write_llada(tmp_path, llada_model)
  path = tmp_path / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-4])
  with pytest.raises(loading.CheckpointError, match="data_offsets .* inside the file"):
    hf.load(tmp_path)


@pytest.mark.parametrize("make,overrides,message", [
    (ref.make_llada, {"model_type": "gpt2"}, "unknown architecture model_type='gpt2'"),
    (ref.make_llada, {"block_type": "sequential"}, "block_type='sequential' is not supported"),
    (ref.make_llada, {"mask_token_id": None}, "mask_token_id=None must be an id inside"),
    (ref.make_llada, {"mask_token_id": 64}, r"inside the vocabulary \[0, 64\)"),
    (ref.make_dream, {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "RoPE scaling .* is not supported"),
    (ref.make_dream, {"hidden_size": None}, "hidden_size"),
])
def test_unsupported_configs_are_rejected(tmp_path, make, overrides, message):
  config = (ref.llada_config if make is ref.make_llada else ref.dream_config)()
  make(str(tmp_path))
  config.update(overrides)
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(loading.CheckpointError, match=message) as raised:
    hf.load(tmp_path)
  assert isinstance(raised.value, ValueError)


def test_partition_rule_splits_the_largest_divisible_dimension():
  assert loading.partition_spec((64, 96), 4, "fsdp") == loading.PartitionSpec(None, "fsdp")
  assert loading.partition_spec((96, 64), 4, "x") == loading.PartitionSpec("x", None)
  assert loading.partition_spec((30, 7), 4, "fsdp") == loading.PartitionSpec()
  assert loading.partition_spec((128,), 4, "fsdp") == loading.PartitionSpec()
  assert loading.partition_spec((64, 96), 1, "fsdp") == loading.PartitionSpec()
  assert isinstance(loading.param_sharding((4, 4), None), jax.sharding.SingleDeviceSharding)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  assert loading.param_sharding((4, 4), mesh).spec == loading.PartitionSpec()
  with pytest.raises(ValueError, match="not 'model'"):
    loading.param_sharding((4, 4), mesh, axis="model")


@pytest.mark.parametrize("make", [ref.make_llada, ref.make_dream])
def test_tokenizer_and_chat_template_match_transformers(tmp_path, make):
  make(str(tmp_path))
  ours = hf.load(tmp_path).tokenizer
  theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
  chat = [{"role": "user", "content": "  what is two plus three  "},
          {"role": "assistant", "content": "three"}, {"role": "user", "content": "hello"}]
  for add in (True, False):
    text = theirs.apply_chat_template(chat, add_generation_prompt=add, tokenize=False)
    assert ours.apply_chat_template(chat, add_generation_prompt=add) == text
    ids = theirs.apply_chat_template(chat, add_generation_prompt=add, tokenize=True)["input_ids"]
    assert ours.encode_chat(chat, add_generation_prompt=add) == list(ids)
  ids = ours.encode("hello world")
  assert ids == theirs("hello world")["input_ids"]
  assert ours.decode(np.asarray(ids)) == theirs.decode(ids, skip_special_tokens=True)
  assert ours.vocab_size == ref.VOCAB


def test_tokenizer_errors(tmp_path):
  ref.make_dream(str(tmp_path))
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  del config["chat_template"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  with pytest.raises(hf.TokenizerError, match="no chat_template"):
    hf.load(tmp_path).tokenizer.apply_chat_template([{"role": "user", "content": "hello"}])
  os.remove(tmp_path / "tokenizer.json")
  with pytest.raises(hf.TokenizerError, match="tokenizer.json not found"):
    hf.load(tmp_path)
  assert hf.load(tmp_path, with_tokenizer=False).tokenizer is None
