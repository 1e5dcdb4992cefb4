"""Reading Hugging Face checkpoints: `config.json`, safetensors tensors, device placement.

A checkpoint directory holds `config.json` and the weights, either one
`model.safetensors` or shards `*.safetensors` listed by
`model.safetensors.index.json` (its `weight_map`: tensor name -> shard file).

A safetensors file is an 8-byte little-endian header length `n`, an `n`-byte
JSON header giving each tensor's `dtype`, `shape` and `data_offsets` (relative
to the end of the header), then the raw little-endian data. The header is
parsed here and tensors are read through `numpy.memmap`, because
`safetensors.safe_open(..., framework="numpy")` cannot return bfloat16 (numpy
has no such dtype: safetensors 0.8.0 raises `TypeError: data type 'bfloat16'
not understood`), while `ml_dtypes` (a JAX dependency) lets a memmap view bf16
data directly. This also keeps the `safetensors` package out of the runtime
dependencies.

Every parameter becomes a `jax.Array` made by `jax.make_array_from_callback`:
the callback for each device slices the memory map, so only the pages of that
device's shard are read, and no full host copy of a large model is ever made.
Files are visited one at a time (shard by shard), tensors in file order.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype names -> numpy dtypes (little-endian, as the format stores them).
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES_SHOWN = 5  # how many names an error lists before "and N more"


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be loaded; the message names the file or tensor."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One checkpoint tensor and the Flax parameter it becomes.

  Attributes:
    name: the tensor's name in the checkpoint, e.g. `"model.norm.weight"`.
    path: the parameter's path in the Flax `params` tree, e.g.
      `("final_norm", "scale")`.
    shape: the tensor's shape in the checkpoint.
    transpose: a 2-D `torch.nn.Linear` weight `[out, in]` that becomes a Flax
      `Dense` kernel `[in, out]`.
  """
  name: str
  path: tuple[str, ...]
  shape: tuple[int, ...]
  transpose: bool = False

  @property
  def param_shape(self) -> tuple[int, ...]:
    """The Flax parameter's shape."""
    return self.shape[::-1] if self.transpose else self.shape


@dataclasses.dataclass(frozen=True)
class StoredTensor:
  """Where a tensor lies in a safetensors file: `shape` elements of `dtype` from byte `offset`."""
  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  offset: int


def read_json_object(path: str, error: type[CheckpointError] = CheckpointError
                     ) -> dict[str, Any]:
  """The JSON object in the file at `path`.

  Raises:
    `error`: the file is not valid JSON or does not hold an object.
  """
  with open(path, encoding="utf-8") as f:
    try:
      value = json.load(f)
    except json.JSONDecodeError as e:
      raise error(f"{path} is not valid JSON: {e}") from e
  if not isinstance(value, dict):
    raise error(f"{path} must hold a JSON object, got {type(value).__name__}")
  return value


def read_config(checkpoint_dir: str) -> dict[str, Any]:
  """The parsed `config.json` of a checkpoint directory.

  Raises:
    CheckpointError: the file is missing or is not a JSON object.
  """
  path = os.path.join(checkpoint_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{CONFIG_FILE} not found in checkpoint directory {checkpoint_dir!r}")
  return read_json_object(path)


def config_int(config: dict[str, Any], key: str, default: int | None = None) -> int:
  """The int `config[key]`, or `default` when the key is absent or null.

  Raises:
    CheckpointError: the value (or, without one, `default`) is not an int;
      the message names the key.
  """
  value = config.get(key)
  value = default if value is None else value
  if isinstance(value, bool) or not isinstance(value, int):
    raise CheckpointError(f"config.json: {key!r} must be an int, got {config.get(key)!r}")
  return value


def read_header(path: str) -> dict[str, StoredTensor]:
  """The tensors of one safetensors file, from its header (no tensor data is read).

  Raises:
    CheckpointError: the file is missing, its header is malformed, a tensor
      has a dtype this reader does not know (`_DTYPES`) or a shape or offsets
      that are not non-negative integers, a tensor's byte range does not match
      its dtype and shape or runs past the end of the file, or two tensors'
      byte ranges overlap.
  """
  if not os.path.isfile(path):
    raise CheckpointError(f"safetensors file {path!r} not found")
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    prefix = f.read(8)
    header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if not 0 < header_size <= file_size - 8:
      raise CheckpointError(f"{path} is not a safetensors file (bad header length)")
    try:
      header = json.loads(f.read(header_size))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
      raise CheckpointError(f"{path} has a malformed safetensors header: "
                            f"{type(e).__name__}: {str(e)[:200]}") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{path} has a malformed safetensors header (not a JSON object)")
  data_start = 8 + header_size
  tensors = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = _DTYPES.get(entry["dtype"])
      shape = tuple(entry["shape"])
      begin, end = entry["data_offsets"]
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"tensor {name!r} in {path} has a malformed header entry "
                            f"{str(entry)[:200]}") from e
    if not all(_is_count(n) for n in (*shape, begin, end)):
      raise CheckpointError(f"tensor {name!r} in {path}: shape {str(list(shape))[:100]} and "
                            f"data_offsets must be non-negative integers")
    if dtype is None:
      raise CheckpointError(f"tensor {name!r} in {path} has unsupported dtype "
                            f"{str(entry['dtype'])[:50]!r}; supported: {sorted(_DTYPES)}")
    if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > file_size:
      raise CheckpointError(f"tensor {name!r} in {path}: data_offsets {[begin, end]} do not "
                            f"fit {entry['dtype']}{list(shape)} inside the file")
    tensors[name] = StoredTensor(path, dtype, shape, data_start + begin)
  _check_disjoint(tensors, path)
  return tensors


def _is_count(value: Any) -> bool:
  """A JSON integer >= 0 (not a bool, float or string)."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_disjoint(tensors: dict[str, StoredTensor], path: str) -> None:
  """Raises CheckpointError when two tensors' byte ranges overlap (one would read the
  other's bytes)."""
  spans = sorted((t.offset, t.offset + math.prod(t.shape) * t.dtype.itemsize, name)
                 for name, t in tensors.items())
  covered_end, covering = 0, None  # the furthest end so far, and whose it is
  for begin, end, name in spans:
    if begin < end:  # empty tensors hold no bytes
      if begin < covered_end:
        raise CheckpointError(f"tensors {covering!r} and {name!r} in {path} overlap "
                              f"(bytes {begin}..{min(end, covered_end)} of the file)")
      covered_end, covering = end, name


def _index_files(checkpoint_dir: str) -> list[str]:
  """The safetensors files of a checkpoint: the index's shards, or the single file."""
  index_path = os.path.join(checkpoint_dir, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path, encoding="utf-8") as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path} has no valid 'weight_map': {e!r}") from e
    files = sorted(set(weight_map.values()))
    for file in files:
      if not os.path.isfile(os.path.join(checkpoint_dir, file)):
        held = sorted(name for name, f in weight_map.items() if f == file)
        raise CheckpointError(f"shard {file!r} listed in {INDEX_FILE} is missing from "
                              f"{checkpoint_dir!r} (it holds {_some(held)})")
    return files
  if os.path.isfile(os.path.join(checkpoint_dir, SINGLE_FILE)):
    return [SINGLE_FILE]
  raise CheckpointError(f"no weights in {checkpoint_dir!r}: neither {SINGLE_FILE} nor "
                        f"{INDEX_FILE} found")


def stored_tensors(checkpoint_dir: str) -> dict[str, StoredTensor]:
  """Every tensor of a checkpoint directory by name, read from the safetensors headers.

  Raises:
    CheckpointError: no weights, a shard listed by the index is missing, a
      tensor appears in two files, or a header is malformed (see `read_header`).
  """
  tensors: dict[str, StoredTensor] = {}
  for file in _index_files(checkpoint_dir):
    for name, stored in read_header(os.path.join(checkpoint_dir, file)).items():
      if name in tensors:
        raise CheckpointError(f"tensor {name!r} appears in both {tensors[name].file} and "
                              f"{stored.file}")
      tensors[name] = stored
  return tensors


def _some(names: Iterable[str]) -> str:
  names = list(names)
  shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
  more = len(names) - _NAMES_SHOWN
  return shown + (f" and {more} more" if more > 0 else "")


def check_tensors(stored: dict[str, StoredTensor], specs: list[TensorSpec]) -> None:
  """Checks that a checkpoint holds exactly the expected tensors, with the expected shapes.

  Raises:
    CheckpointError: naming the missing tensors, the unexpected ones, or the
      first tensor whose shape differs (with both shapes).
  """
  expected = {spec.name: spec for spec in specs}
  missing = [name for name in expected if name not in stored]
  if missing:
    raise CheckpointError(f"checkpoint lacks tensor(s) {_some(missing)}")
  unexpected = sorted(name for name in stored if name not in expected)
  if unexpected:
    raise CheckpointError(f"checkpoint has unexpected tensor(s) {_some(unexpected)} "
                          f"(in {stored[unexpected[0]].file})")
  for name, spec in expected.items():
    if stored[name].shape != spec.shape:
      raise CheckpointError(f"tensor {name!r} has shape {list(stored[name].shape)} in "
                            f"{stored[name].file}, expected {list(spec.shape)}")


def partition_spec(shape: tuple[int, ...], axis_size: int, axis: str) -> PartitionSpec:
  """How a parameter is split over a mesh axis of `axis_size` devices.

  A tensor with two or more dimensions is split along its largest dimension
  that `axis_size` divides (the first such on ties); vectors, scalars and
  tensors with no divisible dimension are replicated (`PartitionSpec()`).
  """
  if len(shape) < 2 or axis_size == 1:
    return PartitionSpec()
  divisible = [d for d, n in enumerate(shape) if n % axis_size == 0]
  if not divisible:
    return PartitionSpec()
  dim = max(divisible, key=lambda d: shape[d])
  return PartitionSpec(*[axis if d == dim else None for d in range(len(shape))])


def param_sharding(shape: tuple[int, ...], mesh: Mesh | None,
                   axis: str = "fsdp") -> jax.sharding.Sharding:
  """Where a parameter of `shape` is placed: on the first device without a mesh,
  else split over the mesh axis `axis` by `partition_spec` (replicated over the
  other axes).

  Raises:
    ValueError: `mesh` has no axis named `axis`.
  """
  if mesh is None:
    return SingleDeviceSharding(jax.devices()[0])
  if axis not in mesh.shape:
    raise ValueError(f"the mesh has axes {tuple(mesh.axis_names)}, not {axis!r}")
  return NamedSharding(mesh, partition_spec(shape, mesh.shape[axis], axis))


def _read_slice(data: np.ndarray, spec: TensorSpec, dtype: np.dtype,
                index: tuple[slice, ...]) -> np.ndarray:
  """The block `index` of the parameter, from the memory-mapped checkpoint tensor `data`.

  Slicing the memmap reads only the pages that hold the block; `astype`
  always copies, so the result never aliases the file, which is closed later.
  """
  if spec.transpose:
    return data[index[::-1]].T.astype(dtype, order="C")
  return data[index].astype(dtype, order="C")


def _insert(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _load_file(file: str, specs: list[TensorSpec], stored: dict[str, StoredTensor],
               dtype: np.dtype, mesh: Mesh | None, axis: str) -> dict[str, jax.Array]:
  """The arrays of the `specs` stored in one file; the file is unmapped on return."""
  mapped = np.memmap(file, dtype=np.uint8, mode="r")
  arrays = {}
  for spec in specs:
    info = stored[spec.name]
    nbytes = math.prod(info.shape) * info.dtype.itemsize
    data = mapped[info.offset:info.offset + nbytes].view(info.dtype).reshape(info.shape)
    arrays[spec.name] = jax.make_array_from_callback(
        spec.param_shape, param_sharding(spec.param_shape, mesh, axis),
        lambda index, data=data, spec=spec: _read_slice(data, spec, dtype, index))
  return arrays


def load_params(checkpoint_dir: str, specs: list[TensorSpec], *, dtype: Any,
                mesh: Mesh | None = None, axis: str = "fsdp") -> dict:
  """Reads a checkpoint's tensors into a Flax parameter tree on devices.

  Args:
    checkpoint_dir: directory with `model.safetensors` or an index and shards.
    specs: every tensor the model expects (see `TensorSpec`).
    dtype: the parameters' dtype on device (converted from the stored dtype).
    mesh: optional device mesh; parameters are placed by `param_sharding`.
      Without one, everything goes to the first device.
    axis: the mesh axis that parameters are split over.

  Returns:
    A nested dict of `jax.Array`s, `tree[path[0]]...[path[-1]]` for each spec,
    each of shape `spec.param_shape` and dtype `dtype`.

  Raises:
    CheckpointError: missing weights, shards or tensors, unexpected tensors,
      shape mismatches, or malformed headers (the message names the tensor or file).
    ValueError: `mesh` has no axis `axis`.
  """
  stored = stored_tensors(checkpoint_dir)
  check_tensors(stored, specs)
  by_file: dict[str, list[TensorSpec]] = {}
  for spec in sorted(specs, key=lambda s: (stored[s.name].file, stored[s.name].offset)):
    by_file.setdefault(stored[spec.name].file, []).append(spec)
  params: dict = {}
  for file, file_specs in by_file.items():
    arrays = _load_file(file, file_specs, stored, np.dtype(dtype), mesh, axis)
    for spec in file_specs:
      _insert(params, spec.path, arrays[spec.name])
  return params
