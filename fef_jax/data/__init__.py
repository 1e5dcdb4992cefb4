"""Data: tokenizers, benchmark loaders, synthetic tasks and batching.

- `tokenizers`: byte and byte-level BPE tokenizers sharing one id convention
  (model predicts ids in `[0, V)`, the mask id is `V`).
- `text`: loaders for tiny Shakespeare, GSM8K and MBPP files.
- `synthetic`: token-level tasks with known answers where factorization error
  shows (pair sums, permutations, copies, multi-token phrases).
- `pipeline`: packing and padding into fixed-length rows, and a deterministic,
  resumable batch iterator.
"""
from fef_jax.data import pipeline
from fef_jax.data import synthetic
from fef_jax.data import text
from fef_jax.data import tokenizers

__all__ = ["pipeline", "synthetic", "text", "tokenizers"]
