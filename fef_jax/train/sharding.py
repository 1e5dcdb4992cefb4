"""Device mesh and partitioning: data parallelism plus FSDP-style parameter sharding.

The mesh has axes `("data", "fsdp")`. A batch is split over both axes; every
array of the train state with two or more dimensions is split along its largest
dimension divisible by the `fsdp` size (parameters, their EMA and the Adam
moments alike), and everything else is replicated. XLA's SPMD partitioner
inserts the collectives; there is no hand-written communication. The same
config runs on one CPU (a 1x1 mesh), one GPU, or a TPU pod slice (after
`initialize_distributed`).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def initialize_distributed() -> None:
  """Starts multi-host JAX when launched as several processes (TPU pods, SLURM, ...).

  `jax.distributed.initialize()` reads the cluster from the environment; on a
  single process (no coordinator configured and not on a TPU pod) nothing is done.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES"):
    jax.distributed.initialize()


def make_mesh(data: int = -1, fsdp: int = 1) -> Mesh:
  """A `(data, fsdp)` mesh over all devices; `-1` takes the devices left over.

  Raises:
    ValueError: sizes that do not multiply to the number of devices.
  """
  count = jax.device_count()
  if data == -1 and fsdp >= 1 and count % fsdp == 0:
    data = count // fsdp
  elif fsdp == -1 and data >= 1 and count % data == 0:
    fsdp = count // data
  if data < 1 or fsdp < 1 or data * fsdp != count:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {count} devices")
  devices = np.asarray(jax.devices()).reshape(data, fsdp)
  return Mesh(devices, AXES)


def _leaf_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  if len(shape) < 2 or fsdp_size == 1:
    return P()
  candidates = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: shape[d])
  return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `state` (see the module docstring for the rule)."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(np.shape(x), fsdp_size)), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over every device (both mesh axes); other dimensions whole."""
  return NamedSharding(mesh, P(AXES))


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a batch on the mesh (its size must divide by the device count).

  On several hosts, `batch` is this host's share and the result the global batch.

  Raises:
    ValueError: a batch size that the devices cannot split evenly.
  """
  sharding = batch_sharding(mesh)
  size = mesh.devices.size
  for name, value in batch.items():
    if np.shape(value)[0] % size:
      raise ValueError(f"batch '{name}' has {np.shape(value)[0]} rows, not divisible by "
                       f"the {size} devices of the mesh")
  if jax.process_count() > 1:  # each host holds its own slice of the global batch
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for name, value in batch.items()}
  return {name: jax.device_put(value, sharding) for name, value in batch.items()}
