"""Tokenizers sharing one id convention, saved with a run and checked on load.

Id convention (`V = vocab_size`):
- The denoiser outputs logits over exactly the `V` ordinary ids `0..V-1`.
- `pad_id` and `eos_id` are ordinary ids inside `[0, V)`: a model can predict
  them (an answer ends with `eos_id`).
- `mask_id == V` is the absorbing MASK, one past the output vocabulary: the
  input embedding has `V + 1` rows and MASK is never predicted. This is the
  convention of `fef_jax.oracles` and of the samplers' `mask_id` argument.

Every tokenizer has `encode(str) -> list[int]`, `decode(list[int]) -> str`,
`vocab_size`, `pad_id`, `eos_id`, `mask_id`, `save(directory)` and
`fingerprint()`. `load(directory, expected_fingerprint=...)` restores a saved
tokenizer and raises if it is not the one a run was trained with.

Implementations:
- `ByteTokenizer`: UTF-8 bytes `0..255`, pad 256, eos 257 (`V = 258`).
- `BpeTokenizer`: byte-level BPE trained locally with the Hugging Face
  `tokenizers` package (imported only when a BPE tokenizer is built), pad 0,
  eos 1. Any string round-trips exactly.
"""
from __future__ import annotations

import abc
import hashlib
import json
import pathlib
from collections.abc import Iterable, Sequence

FILENAME = "fef_tokenizer.json"
_FORMAT = "fef_jax.tokenizer"
_FORMAT_VERSION = 1
_BPE_PAD, _BPE_EOS = "<pad>", "<eos>"
_NUM_BYTES = 256


class Tokenizer(abc.ABC):
  """Common interface; see the module docstring for the id convention."""

  kind: str  # Names the implementation in saved files and fingerprints.

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """`V`: the number of ids a model predicts (pad and eos included)."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int:
    """Padding id, inside `[0, V)`."""

  @property
  @abc.abstractmethod
  def eos_id(self) -> int:
    """End-of-sequence id, inside `[0, V)`."""

  @property
  def mask_id(self) -> int:
    """The absorbing MASK id, `V` (never predicted)."""
    return self.vocab_size

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ids of `text`, without pad or eos; every id is in `[0, V)`."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, skipping pad and eos.

    Raises:
      ValueError: an id outside `[0, V)` (MASK included).
    """

  @abc.abstractmethod
  def _payload(self) -> dict:
    """JSON-able content that, with `kind`, rebuilds the tokenizer."""

  def fingerprint(self) -> str:
    """`kind-V<V>-pad<id>-eos<id>-<hash>`: equal iff the tokenizers encode alike.

    The hash covers the canonical JSON of the whole vocabulary (merges
    included), so retraining with another size or corpus changes it.
    """
    content = json.dumps(self._payload(), sort_keys=True, ensure_ascii=True)
    digest = hashlib.sha256(content.encode("ascii")).hexdigest()[:16]
    return (f"{self.kind}-V{self.vocab_size}-pad{self.pad_id}"
            f"-eos{self.eos_id}-{digest}")

  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    """Writes `<directory>/fef_tokenizer.json` (creating `directory`); its path."""
    path = pathlib.Path(directory) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": _FORMAT, "format_version": _FORMAT_VERSION,
              "kind": self.kind, "vocab_size": self.vocab_size,
              "pad_id": self.pad_id, "eos_id": self.eos_id,
              "mask_id": self.mask_id, "fingerprint": self.fingerprint(),
              "payload": self._payload()}
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return path


def _check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
  """`ids` as ints; ValueError naming the first id outside `[0, vocab_size)`."""
  ids = [int(i) for i in ids]
  for position, i in enumerate(ids):
    if not 0 <= i < vocab_size:
      raise ValueError(f"id {i} at position {position} is outside [0, "
                       f"{vocab_size}) (the mask id is {vocab_size}).")
  return ids


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as ids `0..255`; pad 256, eos 257; `V = 258`, mask 258.

  `decode` replaces invalid UTF-8 (possible in model samples) with U+FFFD.
  """

  kind = "byte"

  @property
  def vocab_size(self) -> int:
    return _NUM_BYTES + 2

  @property
  def pad_id(self) -> int:
    return _NUM_BYTES

  @property
  def eos_id(self) -> int:
    return _NUM_BYTES + 1

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    ids = _check_ids(ids, self.vocab_size)
    data = bytes(i for i in ids if i < _NUM_BYTES)
    return data.decode("utf-8", errors="replace")

  def _payload(self) -> dict:
    return {}


def _hf_tokenizers():
  """The Hugging Face `tokenizers` package; ImportError saying how to get it."""
  try:
    import tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("BpeTokenizer needs the `tokenizers` package: "
                      "pip install tokenizers") from e
  return tokenizers


class BpeTokenizer(Tokenizer):
  """Byte-level BPE (GPT-2 pre-tokenization, no normalization); pad 0, eos 1.

  The literal strings "<pad>" and "<eos>" in text are encoded as ordinary
  bytes, so pad and eos ids only ever come from the caller.
  """

  kind = "bpe"

  def __init__(self, hf_tokenizer):
    """Wraps a trained `tokenizers.Tokenizer`.

    Raises:
      ValueError: it lacks the "<pad>" or "<eos>" special token.
    """
    for token in (_BPE_PAD, _BPE_EOS):
      if hf_tokenizer.token_to_id(token) is None:
        raise ValueError(f"BPE tokenizer has no {token!r} token.")
    hf_tokenizer.encode_special_tokens = True  # Not serialized; set on wrap.
    self._hf = hf_tokenizer

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
    """Trains on `texts` with at most `vocab_size` ids (256 bytes + pad + eos + merges).

    The result has fewer ids when the corpus supports fewer merges; read
    `vocab_size` off the trained tokenizer. Training is deterministic.

    Raises:
      ValueError: `vocab_size < 258` (the bytes, pad and eos must fit).
    """
    if vocab_size < _NUM_BYTES + 2:
      raise ValueError(f"vocab_size must be >= {_NUM_BYTES + 2}, got {vocab_size}.")
    hf = _hf_tokenizers()
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[_BPE_PAD, _BPE_EOS],
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return cls(tokenizer)

  @classmethod
  def from_payload(cls, payload: dict) -> BpeTokenizer:
    """Rebuilds a tokenizer from `_payload()` output.

    Raises:
      ValueError: the payload has no "hf" entry.
    """
    if "hf" not in payload:
      raise ValueError("BPE payload has no 'hf' entry.")
    hf = _hf_tokenizers()
    return cls(hf.Tokenizer.from_str(json.dumps(payload["hf"])))

  @property
  def vocab_size(self) -> int:
    return self._hf.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._hf.token_to_id(_BPE_PAD)

  @property
  def eos_id(self) -> int:
    return self._hf.token_to_id(_BPE_EOS)

  def encode(self, text: str) -> list[int]:
    return self._hf.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = _check_ids(ids, self.vocab_size)
    return self._hf.decode(ids, skip_special_tokens=True)

  def _payload(self) -> dict:
    return {"hf": json.loads(self._hf.to_str())}


_KINDS = {"byte": lambda payload: ByteTokenizer(),
          "bpe": BpeTokenizer.from_payload}


def load(directory: str | pathlib.Path,
         expected_fingerprint: str | None = None) -> Tokenizer:
  """Loads the tokenizer saved in `directory` by `Tokenizer.save`.

  Args:
    directory: the folder holding `fef_tokenizer.json`.
    expected_fingerprint: if given, the fingerprint the caller was built for
      (e.g. stored in a checkpoint's config).

  Raises:
    FileNotFoundError: no `fef_tokenizer.json` in `directory`.
    ValueError: the file is not valid JSON (names the line), is not a saved
      tokenizer, has an unknown kind, its recorded vocab size, pad, eos or
      fingerprint disagree with the rebuilt tokenizer (corruption or a library
      change), or the fingerprint differs from `expected_fingerprint`.
  """
  path = pathlib.Path(directory) / FILENAME
  if not path.is_file():
    raise FileNotFoundError(f"No saved tokenizer: {path} does not exist.")
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from e
  if not isinstance(record, dict) or record.get("format") != _FORMAT:
    raise ValueError(f"{path} is not a saved fef_jax tokenizer.")
  if record.get("format_version") != _FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {record.get('format_version')!r}, "
                     f"expected {_FORMAT_VERSION}.")
  kind = record.get("kind")
  if kind not in _KINDS:
    raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; "
                     f"known: {sorted(_KINDS)}.")
  try:
    tokenizer = _KINDS[kind](record.get("payload", {}))
  except ImportError:
    raise
  except Exception as e:  # The tokenizers package raises bare Exceptions.
    raise ValueError(f"{path}: cannot rebuild the {kind} tokenizer: {e}") from e
  for field in ("vocab_size", "pad_id", "eos_id", "mask_id"):
    if record.get(field) != getattr(tokenizer, field):
      raise ValueError(f"{path}: saved {field} {record.get(field)!r} but the "
                       f"loaded tokenizer has {getattr(tokenizer, field)}.")
  if record.get("fingerprint") != tokenizer.fingerprint():
    raise ValueError(f"{path}: saved fingerprint {record.get('fingerprint')!r} "
                     f"but the loaded tokenizer has {tokenizer.fingerprint()!r}.")
  if expected_fingerprint is not None and (
      tokenizer.fingerprint() != expected_fingerprint):
    raise ValueError(f"{path}: tokenizer {tokenizer.fingerprint()!r} is not the "
                     f"expected {expected_fingerprint!r}.")
  return tokenizer
