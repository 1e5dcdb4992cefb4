"""Loop-body op counts of compiled samplers (the CPU-side proxy for GPU launches)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fef_jax import api
from fef_jax import samplers
from fef_jax.bench import loop_ops
from tests.helpers import tiny_block_causal_denoiser

# A hand-written module: the entry loops over `outer`, whose body calls `helper`,
# which loops over `inner`; the outer body also runs a conditional whose branch loops.
HLO = """HloModule m, entry_computation_layout={(s32[])->s32[]}

%inner (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4]{0} get-tuple-element(%p), index=1
  %e = f32[4]{0} exponential(%x)
  ROOT %t = (s32[], f32[4]{0}) tuple(%i, %e)
}

%inner_cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %c = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%helper (a: (s32[], f32[4])) -> (s32[], f32[4]) {
  %a = (s32[], f32[4]{0}) parameter(0)
  ROOT %w = (s32[], /*index=1*/f32[4]{0}) while(%a), condition=%inner_cond, body=%inner
}

%branch (b: (s32[], f32[4])) -> (s32[], f32[4]) {
  %b = (s32[], f32[4]{0}) parameter(0)
  ROOT %w2 = (s32[], f32[4]{0}) while(%b), condition=%inner_cond, body=%inner2
}

%inner2 (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  ROOT %t = (s32[], f32[4]{0}) tuple(%p, %p)
}

%outer (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %x = f32[4]{0} get-tuple-element(%p), index=1
  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused
  %cp = f32[4]{0} copy(%x)
  %s = (s32[], f32[4]{0}) call(%p), to_apply=%helper
  %k = s32[] constant(0)
  %c = (s32[], f32[4]{0}) conditional(%k, %p), branch_computations={%branch, %helper}
  ROOT %t = (s32[], f32[4]{0}) tuple(%s)
}

ENTRY %main (x: s32[]) -> s32[] {
  %x = s32[] parameter(0)
  %init = (s32[], f32[4]{0}) tuple(%x, %x)
  %w = (s32[], /*index=1*/f32[4]{0}) while(%init), condition=%inner_cond, body=%outer
  ROOT %r = s32[] get-tuple-element(%w), index=0
}
"""


def test_loops_are_found_with_their_depth_and_working_ops():
  loops = {loop["body"]: loop for loop in loop_ops.while_bodies(HLO)}
  assert set(loops) == {"outer", "inner", "inner2"}
  outer, inner, inner2 = loops["outer"], loops["inner"], loops["inner2"]
  assert (outer["depth"], outer["parent"]) == (1, "main")
  # fusion, copy, call, conditional; not the parameter, constant, tuple or tuple element.
  assert outer["ops"] == 4 and outer["kinds"] == {"fusion": 1, "copy": 1, "call": 1,
                                                  "conditional": 1}
  assert outer["copies"] == ["f32[4]"] and inner["copies"] == []
  # Reached through a call and a conditional branch from the outer body: nested once.
  assert (inner["depth"], inner["parent"]) == (2, "helper")
  assert inner["ops"] == 1 and inner["kinds"] == {"exponential": 1}
  assert (inner2["depth"], inner2["ops"]) == (2, 0)
  assert [loop["body"] for loop in loop_ops.while_bodies(HLO)][0] == "outer"


def test_text_without_computations_is_rejected():
  with pytest.raises(ValueError, match="no HLO computation"):
    loop_ops.while_bodies("not HLO at all")


def test_a_cached_fef_sampler_has_a_round_loop_inside_its_step_loop():
  denoiser = tiny_block_causal_denoiser()
  tokens = np.array([[1, 2, 3, 4, 6, 6, 6, 6]], np.int32)
  key = jax.random.key(1)
  steps = loop_ops.sampler_loop_ops(denoiser, tokens, key, "first_hitting", mask_id=6)
  rounds = loop_ops.sampler_loop_ops(denoiser, tokens, key, "fef", mask_id=6, block_length=2,
                                     cache="exact", window=2)
  step_body = max(steps, key=lambda loop: loop["ops"])
  assert step_body["depth"] == 1 and step_body["ops"] > 20
  # FeF: a step loop over blocks, holding the loop of rounds, which holds the model call.
  fef_step = max((loop for loop in rounds if loop["depth"] == 1), key=lambda l: l["ops"])
  fef_round = max((loop for loop in rounds if loop["depth"] == 2), key=lambda l: l["ops"])
  assert fef_round["parent"] == fef_step["body"]
  assert fef_round["ops"] > 20 and fef_step["kinds"].get("while", 0) >= 1
  with pytest.raises(ValueError):
    loop_ops.sampler_loop_ops(denoiser, tokens, key, "fef", mask_id=6, window=0)


def test_a_fused_cached_round_writes_the_cache_in_place():
  # Blocks of 2 with `W = 2`: each round writes two spans into the loop-carried cache
  # (`Transformer.extend_shared`). Unless the writes depend on the pass that reads the
  # old cache, XLA copies the whole cache (every layer's keys and values) twice per round.
  denoiser = tiny_block_causal_denoiser()
  tokens = jnp.array([[1, 2, 6, 6, 6, 6, 6, 6]], jnp.int32)
  config = samplers.make_config("fef", 6, block_length=2, cache="exact", window=2)
  run = api._run  # pylint: disable=protected-access
  text = run.lower(*api.split_denoiser(denoiser), tokens, jax.random.key(1),
                   config).compile().as_text()
  cache_shape = "f32[1,1,8,1,16]"  # [B, layers, L, heads, head dim]
  fef_round = max((loop for loop in loop_ops.while_bodies(text) if loop["depth"] == 2),
                  key=lambda l: l["ops"])
  assert f"{cache_shape}{{" in text  # the shape the cache has in this program
  assert cache_shape not in fef_round["copies"], fef_round["copies"]
