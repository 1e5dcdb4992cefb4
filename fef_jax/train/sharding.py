"""Device mesh and partitioning: data parallelism, FSDP and Megatron-style tensor parallelism.

The mesh has axes `("data", "fsdp", "tensor")`. A batch is split over `data`
and `fsdp` (replicated over `tensor`). Arrays of the train state (parameters,
their EMA and the Adam moments alike, matched by their path) are split:
- over `tensor`, the transformer's attention heads (`query/key/value` kernels
  `[D, H, K]` on H, the `out` kernel `[H, K, D]` on H) and the MLP's hidden
  features (`gate/up` `[D, F]` on F, `down` `[F, D]` on F), so each device
  computes whole heads and a slice of the MLP (one all-reduce per sublayer);
  a dimension that `tensor` does not divide stays whole;
- over `fsdp`, along the largest remaining dimension that the `fsdp` size
  divides, for every array with two or more dimensions;
and everything else is replicated. XLA's SPMD partitioner inserts the
collectives; there is no hand-written communication. The same config runs on
one CPU (a 1x1x1 mesh), one GPU, or a TPU pod slice (after
`initialize_distributed`).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Module name -> the kernel dimension that tensor parallelism splits.
_TENSOR_DIM = {"query": 1, "key": 1, "value": 1, "out": 0, "gate": 1, "up": 1, "down": 0}


def initialize_distributed() -> None:
  """Starts multi-host JAX when launched as several processes (TPU pods, SLURM, ...).

  `jax.distributed.initialize()` reads the cluster from the environment; on a
  single process (no coordinator configured and not on a TPU pod) nothing is done.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES"):
    jax.distributed.initialize()


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> Mesh:
  """A `(data, fsdp, tensor)` mesh over all devices; one size may be `-1`, the rest.

  Raises:
    ValueError: sizes that do not multiply to the number of devices, or more
      than one `-1`.
  """
  count = jax.device_count()
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data}, fsdp={fsdp}, "
                     f"tensor={tensor}")
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if known >= 1 and count % known == 0:
      sizes[sizes.index(-1)] = count // known
  if min(sizes) < 1 or int(np.prod(sizes)) != count:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} does not cover "
                     f"the {count} devices")
  return Mesh(np.asarray(jax.devices()).reshape(sizes), AXES)


def _module_name(path: tuple[Any, ...]) -> str | None:
  """The name of the Dense module owning a `kernel` leaf, or None for other leaves."""
  keys = [getattr(entry, "key", getattr(entry, "name", None)) for entry in path]
  if len(keys) >= 2 and keys[-1] == "kernel":
    return keys[-2]
  return None


def _leaf_spec(shape: tuple[int, ...], fsdp_size: int, tensor_size: int = 1,
               module: str | None = None) -> P:
  axes: list[str | None] = [None] * len(shape)
  tensor_dim = _TENSOR_DIM.get(module) if tensor_size > 1 else None
  if tensor_dim is not None and tensor_dim < len(shape) and shape[tensor_dim] % tensor_size == 0:
    axes[tensor_dim] = "tensor"
  if len(shape) >= 2 and fsdp_size > 1:
    candidates = [d for d in range(len(shape))
                  if axes[d] is None and shape[d] % fsdp_size == 0]
    if candidates:
      axes[max(candidates, key=lambda d: shape[d])] = "fsdp"
  return P(*axes) if any(axes) else P()


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `state` (see the module docstring for the rule)."""
  fsdp_size, tensor_size = mesh.shape["fsdp"], mesh.shape["tensor"]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, _leaf_spec(np.shape(x), fsdp_size, tensor_size,
                                                     _module_name(path))), state)


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Rows split over the `data` and `fsdp` axes, replicated over `tensor`; with
  `stacked`, the rows are the second axis (`[K, B, ...]`, K steps' batches)."""
  return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def shard_batch(batch: dict[str, Any], mesh: Mesh, stacked: bool = False
                ) -> dict[str, jax.Array]:
  """Places a batch on the mesh (its size must divide by the device count).

  On several hosts, `batch` is this host's share and the result the global batch.
  With `stacked`, every array is `[K, B, ...]` (K steps' batches; see
  `step_chunks.stacked`) and its rows are the second axis.

  Raises:
    ValueError: a batch size that the data x fsdp shards cannot split evenly.
  """
  sharding = batch_sharding(mesh, stacked)
  size = mesh.shape["data"] * mesh.shape["fsdp"]
  for name, value in batch.items():
    rows = np.shape(value)[1 if stacked else 0]
    if rows % size:
      raise ValueError(f"batch '{name}' has {rows} rows, not divisible by "
                       f"the {size} data x fsdp shards of the mesh")
  if jax.process_count() > 1:  # each host holds its own slice of the global batch
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for name, value in batch.items()}
  return {name: jax.device_put(value, sharding) for name, value in batch.items()}
