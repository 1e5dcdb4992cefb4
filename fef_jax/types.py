"""The one result type shared by every sampler."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class SampleStats:
  """Per-row sampling statistics; every field is an int32[B] array.

  Attributes:
    nfe: sequential denoiser calls made while the row still had masks (the
      latency-relevant count; a batched call counts once).
    sequences: whole-sequence equivalents evaluated for the row, rounded up (a
      FeF call over `W` block-local copies of `S` positions with a cache
      counts `W * S / L`; a verification call over `W`
      prefix-revealed copies counts `W`; the compute-relevant count).
    rounds: commit rounds: denoising steps for the baseline samplers, speculative
      verification rounds for FeF.
    tokens: tokens generated (masked positions filled); prompts do not count.
    drafts_examined: FeF only: drafts checked against their target, up to and
      including the first rejection of each round.
    drafts_accepted: FeF only: drafts accepted with probability min(1, p/q).
  """
  nfe: jax.Array
  sequences: jax.Array
  rounds: jax.Array
  tokens: jax.Array
  drafts_examined: jax.Array
  drafts_accepted: jax.Array

  @classmethod
  def zeros(cls, batch_size: int) -> "SampleStats":
    """Statistics of `batch_size` rows before any call: every field int32 zeros[B]."""
    zero_B = jnp.zeros((batch_size,), jnp.int32)
    return cls(nfe=zero_B, sequences=zero_B, rounds=zero_B, tokens=zero_B,
               drafts_examined=zero_B, drafts_accepted=zero_B)

  def add_calls(self, rows_B: jax.Array, calls: int | jax.Array = 1,
                units: int | jax.Array = 1) -> "SampleStats":
    """These statistics with `calls` sequential calls added to `nfe` and `units` to
    `sequences` (in whatever unit the loop counts them) for the rows where the bool
    `rows_B` holds."""
    rows = rows_B.astype(jnp.int32)
    return self.replace(nfe=self.nfe + rows * calls, sequences=self.sequences + rows * units)

  @property
  def tokens_per_round(self) -> jax.Array:
    """float32[B]: generated tokens per commit round."""
    return self.tokens / jnp.maximum(self.rounds, 1)

  @property
  def tokens_per_call(self) -> jax.Array:
    """float32[B]: generated tokens per sequential denoiser call."""
    return self.tokens / jnp.maximum(self.nfe, 1)

  @property
  def acceptance_rate(self) -> jax.Array:
    """float32[B]: accepted / examined drafts (NaN where nothing was drafted)."""
    return jnp.where(self.drafts_examined > 0,
                     self.drafts_accepted / jnp.maximum(self.drafts_examined, 1),
                     jnp.nan)

  def summary(self) -> dict[str, float]:
    """Batch means of every statistic, as Python floats (for tables and JSON)."""
    means = {name: float(jnp.mean(getattr(self, name)))
             for name in ("nfe", "sequences", "rounds", "tokens",
                          "drafts_examined", "drafts_accepted")}
    means["tokens_per_round"] = means["tokens"] / max(means["rounds"], 1e-9)
    means["tokens_per_call"] = means["tokens"] / max(means["nfe"], 1e-9)
    means["acceptance_rate"] = (
        means["drafts_accepted"] / means["drafts_examined"]
        if means["drafts_examined"] > 0 else float("nan"))
    return means


@flax.struct.dataclass
class SampleResult:
  """What every sampler returns.

  Attributes:
    tokens: int32[B, L], the input with every mask filled; prompt positions
      are unchanged.
    stats: per-row `SampleStats`.
  """
  tokens: jax.Array
  stats: SampleStats
