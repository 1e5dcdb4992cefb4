"""Device memory of a training run: the state exactly, activations estimated.

The train state (parameters, optimizer state, EMA) is counted from its arrays:
the bytes of each array's shard on one device, so FSDP and tensor sharding are
accounted for. Activations kept for the backward pass are an estimate per
token and layer (elements, at the compute dtype's width):

- attention: the block input and its norm (2d), queries, keys and values (3d),
  the softmax probabilities (H L, float32), the attention output (d);
- SwiGLU MLP: the input and its norm (2d), gate and up projections (2m), their
  product (m);

so `(8d + 3m) * width + 4 H L` bytes per token and layer without
rematerialization; with `remat` `True`/`"full"`, only each block's input
(`d * width`) plus one block's full set. The other remat policies keep the
matmul outputs, most of the set, and are counted as no rematerialization (an
upper bound). The softmax term assumes materialized probabilities, which
cuDNN's flash attention does not keep (an upper bound there too). The output
adds `B L V` float32 logits twice (logits and their gradient), or `B C V`
with the chunked loss (`loss.logits_chunk = C`). XLA may fuse some of these
away or keep temporaries beside them: compare with `compiled.memory_analysis()`
where it matters.

`fit_warning` compares an estimate with the memory JAX may use on a device
(`device_limit_bytes`): on GPUs JAX preallocates a pool of 75% of the card by default
(`XLA_PYTHON_CLIENT_MEM_FRACTION`), and XLA's temporaries and fragmentation need room
beside what the estimate counts (`HEADROOM`).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from fef_jax.models import transformer


# The share of a device's memory pool an estimate may fill. XLA's temporaries and the
# allocator's fragmentation take the rest: on an H100 (80 GB, JAX's default pool of 75%,
# 59.7 GiB) the 350M config at batch 64, estimated at 56 GiB, ran out of memory in
# `benchmark_train`'s prefetched loop, while 30.5 GiB (batch 32) trained.
HEADROOM = 0.8


def _per_device_bytes(tree: Any) -> int:
  """Bytes of one device's shard of every leaf: arrays, or `jax.ShapeDtypeStruct`s (with
  a sharding, its shard shape; without, the whole shape)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array) and leaf.addressable_shards:
      total += leaf.addressable_shards[0].data.nbytes
      continue
    shape = np.shape(leaf)
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def _remats_whole_blocks(config: transformer.TransformerConfig) -> bool:
  return config.remat in (True, "full")


def activation_bytes(config: transformer.TransformerConfig, batch_size: int,
                     length: int, logits_chunk: int = 0) -> int:
  """Estimated bytes of activations kept for the backward pass of one step of
  `batch_size` rows (one device's share), with the loss's logits whole
  (`logits_chunk=0`) or `logits_chunk` positions at a time."""
  d, m, heads = config.d_model, config.mlp_dim, config.num_heads
  width = np.dtype(config.dtype).itemsize
  per_layer_token = (8 * d + 3 * m) * width + 4 * heads * length
  tokens = batch_size * length
  if _remats_whole_blocks(config):
    layers = config.num_layers * d * width * tokens + per_layer_token * tokens
  else:
    layers = config.num_layers * per_layer_token * tokens
  logits = 2 * 4 * batch_size * (logits_chunk or length) * config.vocab_size
  return int(layers + logits)


def estimate(config: transformer.TransformerConfig, batch_size: int, length: int,
             state: Any, data_shards: int = 1, logits_chunk: int = 0) -> dict[str, int]:
  """Bytes per device: `params`, `optimizer`, `ema` (exact, from `state`'s arrays or
  their `jax.eval_shape` structs, sharded or not),
  `activations` (estimated, for `batch_size / data_shards` rows) and their `total`.

  Raises:
    ValueError: `batch_size` not divisible by `data_shards`.
  """
  if batch_size % data_shards:
    raise ValueError(f"batch_size {batch_size} does not divide by {data_shards} data shards")
  out = {"params": _per_device_bytes(state.params),
         "optimizer": _per_device_bytes(state.opt_state),
         "ema": _per_device_bytes(state.ema_params),
         "activations": activation_bytes(config, batch_size // data_shards, length,
                                         logits_chunk)}
  out["total"] = sum(out.values())
  return out


def readable_bytes(num_bytes: int) -> str:
  """`num_bytes` in the largest unit of GiB, MiB, KiB that fits, e.g. `324.83 MiB`."""
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if num_bytes >= size:
      return f"{num_bytes / size:.2f} {unit}"
  return f"{num_bytes} B"


def format_estimate(estimate_bytes: dict[str, int]) -> str:
  """One line: `memory per device (...): params 324.00 MiB, ..., total 2.10 GiB`."""
  return ("memory per device (activations estimated): " + ", ".join(
      f"{name} {readable_bytes(estimate_bytes[name])}"
      for name in ("params", "optimizer", "ema", "activations", "total")))


def device_limit_bytes(device: jax.Device | None = None) -> int | None:
  """The bytes JAX may allocate on `device` (default: the first local device), from its
  allocator's `memory_stats()`; None where the platform reports none (CPUs)."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except (NotImplementedError, RuntimeError):  # platforms without allocator stats
    return None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def fit_warning(estimate_bytes: dict[str, int], limit_bytes: int | None) -> str | None:
  """A warning when `estimate_bytes["total"]` exceeds `HEADROOM` of `limit_bytes` (the
  step is then likely to run out of memory), naming the knobs that shrink it; None when
  it fits or the limit is unknown."""
  if limit_bytes is None or estimate_bytes["total"] <= HEADROOM * limit_bytes:
    return None
  return (f"the memory estimate {readable_bytes(estimate_bytes['total'])} exceeds "
          f"{HEADROOM:.0%} of the {readable_bytes(limit_bytes)} JAX may use on a device: "
          f"the step will probably run out of memory. Lower batch_size, set "
          f"model.remat=full or loss.logits_chunk, shard over more devices, or raise "
          f"XLA_PYTHON_CLIENT_MEM_FRACTION.")
