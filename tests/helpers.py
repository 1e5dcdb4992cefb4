"""Small shared builders for the sampler tests."""
import jax.numpy as jnp
import numpy as np

import fef_jax as fj


def all_masked(batch, length, mask_id):
  return jnp.full((batch, length), mask_id, jnp.int32)


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
