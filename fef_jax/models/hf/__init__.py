"""Pretrained masked diffusion LMs from Hugging Face checkpoints: LLaDA and Dream in Flax.

    import jax
    import jax.numpy as jnp
    import fef_jax as fj
    from fef_jax.models import hf
    model = hf.load("/ckpt/LLaDA-8B-Instruct", dtype=jnp.bfloat16)
    prompt = model.tokenizer.encode_chat([{"role": "user", "content": "Hi!"}])
    tokens = jnp.asarray([prompt + [model.mask_id] * 64], jnp.int32)
    logits_fn = model.logits_fn(hf.left_padding_valid_fn(model.pad_id))
    result = fj.sample(logits_fn, tokens, jax.random.key(0), "fef",
                       mask_id=model.mask_id, block_length=32)
    model.tokenizer.decode(result.tokens[0, len(prompt):])

The checkpoint directory is a local copy of the Hub repository: `config.json`
(its `model_type` picks the architecture: "llada" or "Dream"), the weights
(`model.safetensors`, or shards with `model.safetensors.index.json`), and the
tokenizer (`tokenizer.json`, `tokenizer_config.json` with the chat template).
Nothing is downloaded and no code from the checkpoint is run.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from fef_jax.generate import left_padding_valid_fn
from fef_jax.models.hf import dream
from fef_jax.models.hf import llada
from fef_jax.models.hf import loading
from fef_jax.models.hf.llada import Denoiser
from fef_jax.models.hf.llada import Network
from fef_jax.models.hf.llada import NetworkConfig
from fef_jax.models.hf.loading import CheckpointError
from fef_jax.models.hf.tokenization import Tokenizer
from fef_jax.models.hf.tokenization import TokenizerError

ARCHITECTURES = {"llada": llada, "dream": dream}  # config.json `model_type`, lower-cased


@dataclasses.dataclass(frozen=True, eq=False)
class HFModel:
  """A loaded checkpoint: network, parameters on devices, special ids and tokenizer.

  Attributes:
    architecture: "llada" or "dream".
    config: the network's `NetworkConfig` (vocabulary size `config.vocab_size`).
    params: the parameter tree (`jax.Array`s, placed as `load` was told).
    mask_id: the mask token id, from config.json's `mask_token_id`; it lies
      inside the vocabulary (126336 for LLaDA-8B, 151666 for Dream-7B).
    eos_id: config.json's `eos_token_id` (the first one if a list), or None.
    pad_id: config.json's `pad_token_id`, else `eos_id`.
    tokenizer: the checkpoint's `Tokenizer`, or None if loaded without one.
    checkpoint_config: config.json as read.
  """
  architecture: str
  config: NetworkConfig
  params: Any
  mask_id: int
  eos_id: int | None
  pad_id: int | None
  tokenizer: Tokenizer | None
  checkpoint_config: dict[str, Any]
  _denoisers: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

  @property
  def network(self) -> Network:
    return Network(self.config)

  def logits_fn(self, valid_fn: Callable[[jax.Array], jax.Array] | None = None) -> Denoiser:
    """The denoiser `int32[N, L] -> float32[N, L, vocab_size]` for `fef_jax.sample`.

    The same `Denoiser` object is returned for equal `valid_fn`s, so repeated
    calls reuse the sampler's compiled program.

    Args:
      valid_fn: optional `tokens_NxL -> bool[N, L]` marking non-padding
        positions, e.g. `left_padding_valid_fn(model.pad_id)`; must be
        hashable. Default: every position valid.
    """
    if valid_fn not in self._denoisers:
      self._denoisers[valid_fn] = Denoiser(self.network, self.params, valid_fn)
    return self._denoisers[valid_fn]


def _architecture(config: dict[str, Any]) -> str:
  model_type = str(config.get("model_type", "")).lower()
  if model_type not in ARCHITECTURES:
    raise CheckpointError(f"config.json: unknown architecture model_type="
                          f"{config.get('model_type')!r} (architectures="
                          f"{config.get('architectures')!r}); supported: "
                          f"{sorted(ARCHITECTURES)}")
  return model_type


def _token_id(config: dict[str, Any], key: str) -> int | None:
  value = config.get(key)
  if isinstance(value, list):
    value = value[0] if value else None
  if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
    raise CheckpointError(f"config.json: {key!r} must be an int, got {value!r}")
  return value


def load(checkpoint_dir: str | os.PathLike, *, dtype: Any = jnp.float32,
         param_dtype: Any = None, mesh: Mesh | None = None, shard_axis: str = "fsdp",
         with_tokenizer: bool = True) -> HFModel:
  """Loads a LLaDA or Dream checkpoint from a local directory in Hugging Face layout.

  Args:
    checkpoint_dir: the directory (see the module docstring).
    dtype: compute dtype (activations and matmul inputs), e.g. `jnp.bfloat16`;
      logits are float32 either way.
    param_dtype: the parameters' dtype on device; default `dtype` (bf16
      parameters halve the memory of an 8B model to 16 GB).
    mesh: optional `jax.sharding.Mesh`; every parameter with two or more
      dimensions is split along its largest dimension divisible by the size
      of the mesh axis `shard_axis`, the rest replicated (see
      `loading.param_sharding`). Default: all on the first device.
    shard_axis: the mesh axis that parameters are split over.
    with_tokenizer: also load `tokenizer.json` (required then).

  Returns:
    The `HFModel`.

  Raises:
    CheckpointError: missing `config.json`, weights, shards or tensors,
      unexpected tensors, shape mismatches, an unknown architecture, an
      unsupported config option, no `mask_token_id` or one outside the
      vocabulary, or (`TokenizerError`) missing/invalid tokenizer files.
    ValueError: `dtype` not floating, or `mesh` has no axis `shard_axis`.
  """
  checkpoint_dir = os.fspath(checkpoint_dir)
  config_json = loading.read_config(checkpoint_dir)
  architecture = _architecture(config_json)
  module = ARCHITECTURES[architecture]
  config = dataclasses.replace(module.network_config(config_json), dtype=dtype)
  mask_id = _token_id(config_json, "mask_token_id")
  if mask_id is None or not 0 <= mask_id < config.vocab_size:
    raise CheckpointError(f"config.json: mask_token_id={mask_id!r} must be an id inside the "
                          f"vocabulary [0, {config.vocab_size})")
  eos_id = _token_id(config_json, "eos_token_id")
  pad_id = _token_id(config_json, "pad_token_id")
  tokenizer = Tokenizer.from_dir(checkpoint_dir) if with_tokenizer else None
  params = loading.load_params(checkpoint_dir, module.tensor_specs(config),
                               dtype=dtype if param_dtype is None else param_dtype,
                               mesh=mesh, axis=shard_axis)
  return HFModel(architecture=architecture, config=config, params=params, mask_id=mask_id,
                 eos_id=eos_id, pad_id=eos_id if pad_id is None else pad_id,
                 tokenizer=tokenizer, checkpoint_config=config_json)


__all__ = ["ARCHITECTURES", "CheckpointError", "Denoiser", "HFModel", "Network",
           "NetworkConfig", "Tokenizer", "TokenizerError", "left_padding_valid_fn", "load"]
