"""Dream in Flax: Qwen2 blocks (biases on q/k/v) with bidirectional attention.

Dream (Dream-org/Dream-v0-*-7B) keeps Qwen2's `config.json` keys and tensor
names (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.bias`,
`model.layers.{i}.mlp.gate_proj.weight`, `model.norm.weight`, `lm_head.weight`)
and runs the network of `fef_jax.models.hf.llada` with `qkv_bias` and
`shift_logits`: Dream's raw output at position `i` predicts token `i + 1`, and
its generation code (`generation_utils.py`) uses
`logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)` as the logits of
each position; `Network` returns those shifted logits.
"""
from __future__ import annotations

from typing import Any

from fef_jax.models.hf.llada import BlockNames, NetworkConfig, build_specs
from fef_jax.models.hf.loading import CheckpointError, TensorSpec, config_int

_LAYER = "model.layers.{i}."
_BLOCK_NAMES: BlockNames = {
    "attention_norm": _LAYER + "input_layernorm.weight",
    "query": _LAYER + "self_attn.q_proj.weight", "query_bias": _LAYER + "self_attn.q_proj.bias",
    "key": _LAYER + "self_attn.k_proj.weight", "key_bias": _LAYER + "self_attn.k_proj.bias",
    "value": _LAYER + "self_attn.v_proj.weight", "value_bias": _LAYER + "self_attn.v_proj.bias",
    "out": _LAYER + "self_attn.o_proj.weight",
    "mlp_norm": _LAYER + "post_attention_layernorm.weight",
    "gate": _LAYER + "mlp.gate_proj.weight", "up": _LAYER + "mlp.up_proj.weight",
    "down": _LAYER + "mlp.down_proj.weight",
}


def _rope_theta(config: dict[str, Any]) -> Any:
  """`rope_theta`, or `rope_parameters.rope_theta` as transformers 5 writes it.

  Raises:
    CheckpointError: RoPE scaling (`rope_scaling`, or a `rope_type` other
      than "default"), which this port does not implement.
  """
  parameters = config.get("rope_parameters") or {}
  if config.get("rope_scaling") is not None or parameters.get("rope_type", "default") != "default":
    raise CheckpointError(f"config.json: RoPE scaling "
                          f"{config.get('rope_scaling') or parameters!r} is not supported "
                          f"(only the default RoPE)")
  return config.get("rope_theta", parameters.get("rope_theta", 10000.0))


def network_config(config: dict[str, Any]) -> NetworkConfig:
  """The `NetworkConfig` of a Dream `config.json` (Qwen2 keys).

  The compute dtype is float32; `load` replaces it with the one asked for.

  Defaults follow Qwen2: `num_key_value_heads` = `num_attention_heads`,
  `head_dim` = `hidden_size / num_attention_heads`, `rms_norm_eps` 1e-6,
  `rope_theta` 10000, `tie_word_embeddings` false.

  Raises:
    CheckpointError: a size key missing or not an int (the message names it),
      `hidden_size` not a multiple of the head count without `head_dim`,
      `hidden_act` other than "silu", sliding-window attention, RoPE scaling,
      or sizes that `NetworkConfig` rejects.
  """
  if config.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"config.json: hidden_act={config['hidden_act']!r} is not "
                          f"supported (only 'silu')")
  if config.get("use_sliding_window"):
    raise CheckpointError("config.json: use_sliding_window=true is not supported")
  rope_theta = _rope_theta(config)
  heads, hidden = config_int(config, "num_attention_heads"), config_int(config, "hidden_size")
  if config.get("head_dim") is not None:
    head_dim = config_int(config, "head_dim")
  elif heads > 0 and hidden % heads == 0:
    head_dim = hidden // heads
  else:
    raise CheckpointError(f"config.json: hidden_size={hidden} must be a multiple of "
                          f"num_attention_heads={heads} (or give head_dim)")
  try:
    return NetworkConfig(
        vocab_size=config_int(config, "vocab_size"), d_model=hidden,
        num_layers=config_int(config, "num_hidden_layers"), num_heads=heads,
        num_kv_heads=config_int(config, "num_key_value_heads", heads),
        head_dim=head_dim,
        mlp_dim=config_int(config, "intermediate_size"), rope_theta=rope_theta,
        norm_eps=config.get("rms_norm_eps", 1e-6), qkv_bias=True,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), shift_logits=True)
  except ValueError as e:
    raise CheckpointError(f"config.json: {e}") from e


def tensor_specs(config: NetworkConfig) -> list[TensorSpec]:
  """Dream's (Qwen2's) tensor names, e.g. `model.layers.0.self_attn.q_proj.weight`."""
  return build_specs(config, embedding="model.embed_tokens.weight", blocks=_BLOCK_NAMES,
                     final_norm="model.norm.weight", unembed="lm_head.weight")
