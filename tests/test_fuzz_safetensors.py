"""The safetensors reader on hostile files: corrupted headers and offsets give a
`CheckpointError`, never an out-of-bounds read, a huge allocation or another exception.

Files are written by hand here (an 8-byte little-endian header length, a JSON header,
the data), so every field can be broken on purpose; a fuzzer flips, inserts and cuts
bytes of a valid file."""
import json
import math
import struct

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from fef_jax.models.hf import loading

TENSORS = {"a": ("F32", [2, 3]), "b": ("BF16", [4]), "c": ("I64", [1, 2])}
ITEMSIZE = {"F32": 4, "BF16": 2, "I64": 8, "F16": 2}


def _valid_header():
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, (dtype, shape) in TENSORS.items():
    size = math.prod(shape) * ITEMSIZE[dtype]
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
    offset += size
  return header, offset


def _write(path, header, data_size=None, header_size=None):
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  if data_size is None:
    data_size = _valid_header()[1]
  size = len(raw) if header_size is None else header_size
  path.write_bytes(struct.pack("<Q", size) + raw + bytes(range(256)) * (data_size // 256)
                   + bytes(data_size % 256))
  return str(path)


def _entry(**changes):
  header, size = _valid_header()
  header["b"] = dict(header["b"], **changes)
  return header


@pytest.mark.parametrize("header,message", [
    (_entry(data_offsets=[-8, 0]), "non-negative integers"),
    (_entry(data_offsets=[-2**62, -2**62 + 8]), "non-negative integers"),
    (_entry(shape=[-4, -1]), "non-negative integers"),
    (_entry(shape=[2.0, 2]), "non-negative integers"),
    (_entry(shape=[True, 4]), "non-negative integers"),
    (_entry(data_offsets=["24", "32"]), "non-negative integers"),
    (_entry(data_offsets=[0, 8]), "overlap"),                       # inside tensor a
    (_entry(data_offsets=[24, 10**12]), "inside the file"),         # past the end
    (_entry(shape=[10**9, 10**9]), "inside the file"),              # a huge tensor
    (_entry(dtype="F8_E9M9"), "unsupported dtype"),
    (_entry(dtype=["F32"]), "malformed header entry"),
    (_entry(data_offsets=[24]), "malformed header entry"),
    ({**_valid_header()[0], "b": [1, 2, 3]}, "malformed header entry"),
    (b"[" * 100_000 + b"]" * 100_000, "malformed safetensors header"),  # deep nesting
    (b'{"a": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 4]}}',
     "non-negative integers"),
    (b"\xff\xfe not json", "malformed safetensors header"),
    (b"[1, 2]", "not a JSON object"),
])
def test_hostile_headers_are_refused_with_a_checkpoint_error(tmp_path, header, message):
  with pytest.raises(loading.CheckpointError, match=message):
    loading.read_header(_write(tmp_path / "model.safetensors", header))


@pytest.mark.parametrize("header_size", [0, 2**63, 2**64 - 1, 10**9])
def test_impossible_header_lengths_are_refused_before_reading(tmp_path, header_size):
  with pytest.raises(loading.CheckpointError, match="bad header length"):
    loading.read_header(_write(tmp_path / "m.safetensors", _valid_header()[0],
                               header_size=header_size))


def test_a_short_file_and_a_valid_file(tmp_path):
  (tmp_path / "short.safetensors").write_bytes(b"\x05\x00")
  with pytest.raises(loading.CheckpointError, match="bad header length"):
    loading.read_header(str(tmp_path / "short.safetensors"))
  tensors = loading.read_header(_write(tmp_path / "ok.safetensors", _valid_header()[0]))
  assert {name: list(t.shape) for name, t in tensors.items()} == {
      name: shape for name, (_, shape) in TENSORS.items()}


def _check_in_bounds(tensors, path):
  """Every tensor lies inside the file's data and no two share a byte."""
  raw = open(path, "rb").read()
  data_start = 8 + int.from_bytes(raw[:8], "little")
  spans = []
  for tensor in tensors.values():
    nbytes = math.prod(tensor.shape) * tensor.dtype.itemsize
    assert data_start <= tensor.offset and tensor.offset + nbytes <= len(raw)
    if nbytes:
      spans.append((tensor.offset, tensor.offset + nbytes))
    # Reading it as the loader does stays inside the file.
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    view = mapped[tensor.offset:tensor.offset + nbytes].view(tensor.dtype)
    assert view.reshape(tensor.shape).size == math.prod(tensor.shape)
  spans.sort()
  assert all(end <= begin for (_, end), (begin, _) in zip(spans, spans[1:]))


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(st.data())
def test_fuzzed_files_are_read_in_bounds_or_refused(tmp_path_factory, data):
  header, data_size = _valid_header()
  raw = bytearray(json.dumps(header).encode())
  for _ in range(data.draw(st.integers(1, 4))):
    kind = data.draw(st.sampled_from(["flip", "digit", "insert", "delete"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
      raw[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "digit":  # offsets and shapes are where corruption hurts
      digits = [i for i, c in enumerate(raw) if chr(c).isdigit()]
      raw[data.draw(st.sampled_from(digits))] = ord(str(data.draw(st.integers(0, 9))))
    elif kind == "insert":
      raw[at:at] = data.draw(st.sampled_from([b"-", b"9", b"99999999999", b"[", b",0"]))
    else:
      del raw[at:at + data.draw(st.integers(1, 3))]
  cut = data.draw(st.sampled_from([0, 0, 1, 7, data_size // 2]))
  path = _write(tmp_path_factory.mktemp("fuzz") / "m.safetensors", bytes(raw),
                data_size=data_size - cut)
  try:
    tensors = loading.read_header(path)
  except loading.CheckpointError as error:
    assert str(error)
    return
  _check_in_bounds(tensors, path)
