"""Flax denoisers: `int32[B, L]` token ids -> `float32[B, L, V]` logits.

    from fef_jax import models
    config = models.TransformerConfig(vocab_size=V, mask_id=V, max_length=L, d_model=256,
                                      num_layers=4, num_heads=4, mlp_dim=768)
    params = models.init_params(config, jax.random.key(0))
    logits_fn = models.Denoiser(models.Transformer(config), params)
    fj.sample(logits_fn, tokens_BxL, key, "fef", mask_id=config.mask_id)
"""
from fef_jax.models.spec_head import SpecHeadConfig
from fef_jax.models.spec_head import SpecHeadDenoiser
from fef_jax.models.spec_head import SpecHeadTransformer
from fef_jax.models.transformer import Denoiser
from fef_jax.models.transformer import KVCache
from fef_jax.models.transformer import Transformer
from fef_jax.models.transformer import TransformerConfig
from fef_jax.models.transformer import flops_per_token
from fef_jax.models.transformer import init_params
from fef_jax.models.transformer import num_params
from fef_jax.models.transformer import rope

__all__ = ["Denoiser", "KVCache", "SpecHeadConfig", "SpecHeadDenoiser", "SpecHeadTransformer",
           "Transformer", "TransformerConfig", "flops_per_token", "init_params", "num_params",
           "rope"]
