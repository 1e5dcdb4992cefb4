"""Small shared builders for the sampler tests."""
import jax
import jax.numpy as jnp
import numpy as np

import fef_jax as fj
from fef_jax import models


def all_masked(batch, length, mask_id):
  return jnp.full((batch, length), mask_id, jnp.int32)


def tiny_block_causal_denoiser():
  """A random-init block-causal transformer: V=6 (mask 6), L=8, attention blocks of 2."""
  config = models.TransformerConfig(vocab_size=6, mask_id=6, max_length=8, d_model=16,
                                    num_layers=1, num_heads=1, mlp_dim=32,
                                    attention="block_causal", block_length=2)
  return models.Denoiser(models.Transformer(config),
                         models.init_params(config, jax.random.key(0)))


def phrase_table():
  """A strongly dependent joint over V=3, L=5: three whole phrases plus 3% smoothing."""
  return fj.oracles.JointTable.from_phrases(
      phrases=[[0, 0, 1, 1, 2], [1, 2, 2, 0, 0], [2, 1, 0, 2, 1]],
      probs=[0.5, 0.3, 0.2], vocab_size=3, smoothing=0.03)


def table_gof(table, tokens_NxL):
  """Pearson p-value and TV of whole-sequence samples against the table's joint."""
  probs = np.asarray(table.probs, np.float64)
  empirical = fj.stats.empirical_distribution(np.asarray(tokens_NxL), table.vocab_size)
  counts = np.round(empirical * tokens_NxL.shape[0]).reshape(-1)
  _, _, p_value = fj.stats.chi_square_gof(counts, probs.reshape(-1))
  return p_value, fj.stats.total_variation(empirical, probs)
