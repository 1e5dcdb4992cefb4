"""fef-jax: masked diffusion language models sampled without factorization error."""
