"""Tiny random LLaDA and Dream checkpoints in Hugging Face layout, and `transformers` references.

The weights come from a `transformers` model (`LlamaForCausalLM` for LLaDA,
`Qwen2ForCausalLM` for Dream) with every parameter randomized; LLaDA's are
renamed to LLaDA's names by the hand-written table `_LLAMA_TO_LLADA` (from
upstream `modeling_llada.py`, independent of `fef_jax`'s own tables), Dream's
keep Qwen2's names. `reference_logits` runs the reference bidirectionally: a 4D
additive attention mask (eager attention) that hides only padding keys, with
Dream's position ids (`cumsum(valid) - 1`).

Run as a script under 8 simulated CPU devices (see test_hf_models.py),
`python tests/hf_reference.py CHECKPOINT_DIR` loads the checkpoint on one
device and on a (data=2, fsdp=4) mesh and prints, as JSON, the largest
parameter and logit differences, the parameters' partition specs, and the
tokens FeF sampled with the sharded model.
"""
import json
import os
import re
import sys

import numpy as np
import safetensors.torch
import tokenizers
import torch
import transformers

LENGTH = 8
VOCAB = 64
_WORDS = ["[UNK]", "user", "assistant", "system", "You", "are", "a", "helpful", ".",
          "hello", "world", "what", "is", "two", "plus", "three"]
LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|mdm_mask|>"]
DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]

# Modeled on LLaDA-8B-Instruct's (Llama-3 style) and Dream-v0-Instruct-7B's (Qwen2) templates.
LLADA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
DREAM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Llama tensor name -> LLaDA tensor name (upstream LLaDAModelLM / LLaDALlamaBlock).
_LAYER = r"model\.layers\.(\d+)\."
_BLOCK = r"model.transformer.blocks.\1."
_LLAMA_TO_LLADA = [
    (r"model\.embed_tokens\.weight", "model.transformer.wte.weight"),
    (r"model\.norm\.weight", "model.transformer.ln_f.weight"),
    (r"lm_head\.weight", "model.transformer.ff_out.weight"),
    (_LAYER + r"input_layernorm\.weight", _BLOCK + "attn_norm.weight"),
    (_LAYER + r"self_attn\.q_proj\.weight", _BLOCK + "q_proj.weight"),
    (_LAYER + r"self_attn\.k_proj\.weight", _BLOCK + "k_proj.weight"),
    (_LAYER + r"self_attn\.v_proj\.weight", _BLOCK + "v_proj.weight"),
    (_LAYER + r"self_attn\.o_proj\.weight", _BLOCK + "attn_out.weight"),
    (_LAYER + r"post_attention_layernorm\.weight", _BLOCK + "ff_norm.weight"),
    (_LAYER + r"mlp\.gate_proj\.weight", _BLOCK + "ff_proj.weight"),
    (_LAYER + r"mlp\.up_proj\.weight", _BLOCK + "up_proj.weight"),
    (_LAYER + r"mlp\.down_proj\.weight", _BLOCK + "ff_out.weight"),
]


def vocabulary(specials):
  """The tiny tokenizer's tokens, id = position: words, the specials, fillers up to VOCAB."""
  tokens = _WORDS + list(specials)
  return tokens + [f"w{i}" for i in range(VOCAB - len(tokens))]


def llada_config(**overrides):
  """A tiny LLaDA config.json (upstream keys), GQA (4 heads, 2 kv heads), untied."""
  ids = {t: i for i, t in enumerate(vocabulary(LLADA_SPECIALS))}
  config = {
      "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama",
      "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "alibi": False,
      "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
      "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 48,
      "mlp_ratio": 4, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "vocab_size": VOCAB,
      "embedding_size": VOCAB, "max_sequence_length": 64,
      "mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
      "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|startoftext|>"],
  }
  config.update(overrides)
  return config


def dream_config(**overrides):
  """A tiny Dream config.json (Qwen2 keys), GQA (4 heads, 2 kv heads), untied."""
  ids = {t: i for i, t in enumerate(vocabulary(DREAM_SPECIALS))}
  config = {
      "model_type": "Dream", "architectures": ["DreamModel"], "hidden_act": "silu",
      "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
      "num_hidden_layers": 2, "intermediate_size": 48, "rope_theta": 1000000.0,
      "rms_norm_eps": 1e-6, "vocab_size": VOCAB, "tie_word_embeddings": False,
      "max_position_embeddings": 64, "rope_scaling": None, "use_sliding_window": False,
      "mask_token_id": ids["<|mask|>"], "pad_token_id": ids["<|endoftext|>"],
      "eos_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|endoftext|>"],
  }
  config.update(overrides)
  return config


def _randomize(model, seed, tie):
  """Every parameter random (norm scales near 1, biases nonzero) so no mapping error hides."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.2 * noise)
    if tie:
      model.lm_head.weight.copy_(model.model.embed_tokens.weight)
  return model.eval()


def llama_reference(config, seed=0):
  """`LlamaForCausalLM` equivalent to a LLaDA config (eager attention; lm_head always
  present, equal to the embedding when LLaDA ties them)."""
  llama = transformers.LlamaConfig(
      vocab_size=config["embedding_size"], hidden_size=config["d_model"],
      intermediate_size=config["mlp_hidden_size"], num_hidden_layers=config["n_layers"],
      num_attention_heads=config["n_heads"],
      num_key_value_heads=config["n_kv_heads"] or config["n_heads"],
      rms_norm_eps=config["rms_norm_eps"], rope_theta=config["rope_theta"],
      max_position_embeddings=config["max_sequence_length"], tie_word_embeddings=False,
      attention_bias=False, mlp_bias=False)
  llama._attn_implementation = "eager"
  return _randomize(transformers.LlamaForCausalLM(llama), seed, config["weight_tying"])


def qwen2_reference(config, seed=0):
  """`Qwen2ForCausalLM` built from a Dream config (eager attention)."""
  keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
          "max_position_embeddings", "tie_word_embeddings", "hidden_act")
  qwen2 = transformers.Qwen2Config(**{k: config[k] for k in keys})
  qwen2._attn_implementation = "eager"
  return _randomize(transformers.Qwen2ForCausalLM(qwen2), seed, config["tie_word_embeddings"])


def llada_tensors(model, config):
  """The Llama reference's weights under LLaDA's names (no `ff_out` when tied)."""
  tensors = {}
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight" and config["weight_tying"]:
      continue
    renamed = [re.sub(p, r, name) for p, r in _LLAMA_TO_LLADA if re.fullmatch(p, name)]
    assert len(renamed) == 1, name
    tensors[renamed[0]] = tensor
  return tensors


def dream_tensors(model, config):
  """The Qwen2 reference's weights: Dream uses the same names."""
  tensors = dict(model.state_dict())
  if config["tie_word_embeddings"]:
    del tensors["lm_head.weight"]
  return tensors


def write_tokenizer(directory, specials, template, bos_token, eos_token):
  """`tokenizer.json` (word level, whitespace split) and `tokenizer_config.json`."""
  vocab = {t: i for i, t in enumerate(vocabulary(specials))}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in specials])
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos_token,
            "eos_token": eos_token, "pad_token": eos_token,
            "unk_token": "[UNK]", "chat_template": template}
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)


def write_checkpoint(directory, config, tensors, *, shards=1, dtype=torch.float32):
  """Writes config.json and the weights (`shards` > 1: round-robin shards plus the index).

  Returns:
    {name: float32 numpy array} of the tensors as stored (after the cast to `dtype`).
  """
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  stored = {name: t.detach().to(dtype).contiguous() for name, t in tensors.items()}
  if shards == 1:
    safetensors.torch.save_file(stored, os.path.join(directory, "model.safetensors"),
                                metadata={"format": "pt"})
  else:
    files = [f"model-{k + 1:05d}-of-{shards:05d}.safetensors" for k in range(shards)]
    weight_map = {name: files[i % shards] for i, name in enumerate(sorted(stored))}
    for file in files:
      safetensors.torch.save_file({n: t for n, t in stored.items() if weight_map[n] == file},
                                  os.path.join(directory, file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in stored.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  return {name: t.float().numpy() for name, t in stored.items()}


def make_llada(directory, *, seed=0, shards=1, dtype=torch.float32, **overrides):
  """A tiny random LLaDA checkpoint with tokenizer; returns (Llama reference, stored tensors)."""
  config = llada_config(**overrides)
  model = llama_reference(config, seed)
  stored = write_checkpoint(directory, config, llada_tensors(model, config), shards=shards,
                            dtype=dtype)
  write_tokenizer(directory, LLADA_SPECIALS, LLADA_TEMPLATE, "<|startoftext|>", "<|endoftext|>")
  return model, stored


def make_dream(directory, *, seed=0, shards=1, dtype=torch.float32, **overrides):
  """A tiny random Dream checkpoint with tokenizer; returns (Qwen2 reference, stored tensors)."""
  config = dream_config(**overrides)
  model = qwen2_reference(config, seed)
  stored = write_checkpoint(directory, config, dream_tensors(model, config), shards=shards,
                            dtype=dtype)
  write_tokenizer(directory, DREAM_SPECIALS, DREAM_TEMPLATE, None, "<|endoftext|>")
  return model, stored


def left_padded_tokens(pad_id, mask_id, seed=0, batch=3, length=LENGTH):
  """int32[batch, length]: row r has r pad tokens on the left, then random non-special
  words and masks (at least the last position); no real token equals `pad_id`."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, len(_WORDS), (batch, length))
  tokens[rng.random((batch, length)) < 0.3] = mask_id
  tokens[:, -1] = mask_id
  for row in range(batch):
    tokens[row, :row] = pad_id
  return tokens.astype(np.int32)


def reference_logits(model, tokens, valid):
  """float32[B, L, V] raw `transformers` logits with bidirectional attention over valid keys."""
  min_value = torch.finfo(torch.float32).min
  keys = torch.as_tensor(np.array(valid, dtype=bool))[:, None, None, :]
  mask = torch.where(keys, 0.0, min_value).expand(-1, 1, tokens.shape[1], -1)
  position_ids = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long), attention_mask=mask,
                position_ids=torch.as_tensor(position_ids, dtype=torch.long))
  return out.logits.float().numpy()


def mesh_check(checkpoint_dir):
  """Single-device vs (data=2, fsdp=4) mesh: parameter and logit differences (with the
  logits' scale and the network's shape, for the round-off bound), partition specs, the
  specs the compiled sampler takes the parameters in, a FeF run with rows split over
  `data` and the sharded model beside one on a single device, and `generate`'s batches
  split over all 8 devices beside one device's."""
  import functools
  import jax
  import fef_jax as fj
  from fef_jax import api
  from fef_jax import generate
  from fef_jax import samplers
  from fef_jax.models import hf
  from fef_jax.train import sharding

  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh(data=2, fsdp=4)
  single = hf.load(checkpoint_dir, with_tokenizer=False)
  sharded = hf.load(checkpoint_dir, mesh=mesh, with_tokenizer=False)
  valid_fn = hf.left_padding_valid_fn(single.pad_id)
  tokens = left_padded_tokens(single.pad_id, single.mask_id)
  logits_single = np.asarray(jax.jit(single.logits_fn(valid_fn))(tokens))
  logits_sharded = np.asarray(jax.jit(sharded.logits_fn(valid_fn))(tokens))
  valid = np.asarray(valid_fn(tokens))
  # Sampling data-parallel (rows over `data`) with the parameters split over `fsdp`: the
  # compiled sampler takes the parameters as arguments in their shardings.
  rows = left_padded_tokens(single.pad_id, single.mask_id, seed=1, batch=4)
  rows_sharded = jax.device_put(rows, jax.sharding.NamedSharding(mesh, sharding.P("data")))
  sample = functools.partial(fj.sample, key=jax.random.key(0), method="fef",
                             mask_id=sharded.mask_id, window=2)
  result = sample(sharded.logits_fn(valid_fn), rows_sharded)
  result_single = sample(single.logits_fn(valid_fn), rows)
  definition, param_leaves = api.split_denoiser(sharded.logits_fn(valid_fn))
  compiled = api._run.lower(  # pylint: disable=protected-access
      definition, param_leaves, rows_sharded, jax.random.key(0),
      samplers.make_config("fef", sharded.mask_id, window=2)).compile()
  program_param_specs = [str(s.spec) for s in compiled.input_shardings[0][0]]
  # `generate`'s batches split over every device (as experiments.generate and evaluate
  # split them when there are several).
  many = np.concatenate([left_padded_tokens(single.pad_id, single.mask_id, seed=seed,
                                            batch=4) for seed in (2, 3, 4)])
  in_batches = functools.partial(generate.sample_in_batches, tokens_NxL=many,
                                 key=jax.random.key(1), method="fef",
                                 mask_id=sharded.mask_id, batch_size=8, window=2)
  batches_split, _ = in_batches(sharded.logits_fn(valid_fn),
                                rows_sharding=generate.rows_over(mesh))
  batches_single, _ = in_batches(single.logits_fn(valid_fn))
  try:
    in_batches(sharded.logits_fn(valid_fn), rows_sharding=generate.rows_over(mesh),
               batch_size=6)
    indivisible_error = None
  except ValueError as e:
    indivisible_error = str(e)
  leaves = jax.tree.leaves(sharded.params)
  param_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(single.params), leaves))
  network = {name: getattr(single.config, name) for name in
             ("d_model", "num_heads", "head_dim", "mlp_dim", "num_layers", "rope_theta")}
  return {"max_abs_diff": float(np.max(np.abs(logits_single - logits_sharded)[valid])),
          "max_abs_logit": float(np.max(np.abs(logits_single)[valid])),
          "length": int(tokens.shape[1]), "network": network,
          "param_max_abs_diff": param_diff,
          "sharded_specs": [str(leaf.sharding.spec) for leaf in leaves],
          "devices_per_param": [len(leaf.sharding.device_set) for leaf in leaves],
          "program_param_specs": program_param_specs,
          "batches_split_equal_single": bool(np.array_equal(batches_split, batches_single)),
          "indivisible_error": indivisible_error,
          "tokens": np.asarray(result.tokens).tolist(), "prompt": rows.tolist(),
          "tokens_single_device": np.asarray(result_single.tokens).tolist(),
          "mask_id": sharded.mask_id}


if __name__ == "__main__":
  print(json.dumps(mesh_check(sys.argv[1])))
