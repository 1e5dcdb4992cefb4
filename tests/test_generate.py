"""Batched generation: prompt layout, padding invariance, stop ids, text round trip."""
import jax
import numpy as np
import pytest

from fef_jax import generate as gen
from fef_jax import models
from fef_jax.data import tokenizers

TOKENIZER = tokenizers.ByteTokenizer()
CONFIG = models.TransformerConfig(vocab_size=TOKENIZER.vocab_size, mask_id=TOKENIZER.mask_id,
                                  max_length=64, d_model=32, num_layers=2, num_heads=4,
                                  mlp_dim=64)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
DENOISER = models.Denoiser(models.Transformer(CONFIG), PARAMS,
                           valid_fn=gen.left_padding_valid_fn(TOKENIZER.pad_id))


def test_layout_left_pads_and_appends_masks():
  tokens = gen.layout_prompts([[1, 2, 3], [4]], 2, mask_id=9, pad_id=0)
  np.testing.assert_array_equal(tokens, [[1, 2, 3, 9, 9], [0, 0, 4, 9, 9]])
  rounded = gen.layout_prompts([[1, 2, 3]], 1, mask_id=9, pad_id=0, length_multiple=4)
  np.testing.assert_array_equal(rounded, [[0, 1, 2, 3, 9]])


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([], {}, "no prompts"),
    ([[1]], {"gen_length": 0}, "gen_length"),
    ([[1, 2, 3]], {"prompt_length": 2}, "longer than"),
    ([[1, 9]], {}, "contains mask_id"),
    ([[0, 1]], {}, "starts with pad_id"),
])
def test_layout_rejects_bad_prompts(prompts, kwargs, message):
  kwargs = {"gen_length": 2, **kwargs}
  with pytest.raises(ValueError, match=message):
    gen.layout_prompts(prompts, mask_id=9, pad_id=0, **kwargs)


def test_left_padding_valid_fn_keeps_generated_pads():
  valid = gen.left_padding_valid_fn(0)(np.array([[0, 0, 5, 0, 7], [3, 0, 0, 0, 0]]))
  np.testing.assert_array_equal(valid, [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])


def test_greedy_output_does_not_depend_on_padding_or_batch_neighbours():
  """RoPE is relative and padding is masked: a prompt alone == the same prompt padded."""
  prompt, longer = TOKENIZER.encode("abc"), TOKENIZER.encode("a longer prompt")
  kwargs = dict(gen_length=8, mask_id=TOKENIZER.mask_id, pad_id=TOKENIZER.pad_id,
                method="fef", temperature=0.0, batch_size=2)
  alone = gen.generate(DENOISER, [prompt], jax.random.key(1), **kwargs)
  padded = gen.generate(DENOISER, [longer, prompt], jax.random.key(2), **kwargs)
  assert alone.token_ids[0] == padded.token_ids[1]


def test_generate_fills_last_batch_cuts_at_stop_ids_and_reports_per_prompt_stats():
  prompts = [TOKENIZER.encode(t) for t in ("x", "yy", "zzz")]
  kwargs = dict(gen_length=6, mask_id=TOKENIZER.mask_id, pad_id=TOKENIZER.pad_id,
                batch_size=2, method="first_hitting")
  full = gen.generate(DENOISER, prompts, jax.random.key(3), **kwargs)
  assert [len(ids) for ids in full.token_ids] == [6, 6, 6]
  assert full.stats.nfe.shape == (3,)
  np.testing.assert_array_equal(full.stats.tokens, [6, 6, 6])
  stop = full.token_ids[0][2]
  cut = gen.generate(DENOISER, prompts, jax.random.key(3), stop_ids=(stop,), **kwargs)
  assert cut.token_ids[0] == full.token_ids[0][:full.token_ids[0].index(stop)]
  with pytest.raises(ValueError, match="batch_size"):
    gen.generate(DENOISER, prompts, jax.random.key(3), **{**kwargs, "batch_size": 0})


def test_text_generate_fn_returns_one_completion_per_prompt_and_records_stats():
  complete = gen.tokenizer_generate_fn(DENOISER, TOKENIZER, jax.random.key(4), gen_length=5,
                                       batch_size=2, length_multiple=8)
  first = complete(["hello", "hi", "hey there"])
  second = complete(["hello", "hi", "hey there"])
  assert len(first) == 3 and all(isinstance(t, str) for t in first)
  assert len(complete.stats) == 2 and complete.stats[0].nfe.shape == (3,)
  assert first != second  # each call draws fresh samples


def test_sample_in_batches_in_parts_equals_one_call_and_times_every_batch():
  tokens = np.full((5, 8), TOKENIZER.mask_id, np.int32)
  tokens[:, :2] = np.arange(10).reshape(5, 2) + 65
  kwargs = dict(method="first_hitting", mask_id=TOKENIZER.mask_id, batch_size=2)
  whole, whole_stats = gen.sample_in_batches(DENOISER, tokens, jax.random.key(4), **kwargs)
  timings = []
  head, head_stats = gen.sample_in_batches(DENOISER, tokens[:2], jax.random.key(4),
                                           timings=timings, **kwargs)
  tail, tail_stats = gen.sample_in_batches(DENOISER, tokens[2:], jax.random.key(4),
                                           first_batch=1, timings=timings, **kwargs)
  np.testing.assert_array_equal(np.concatenate([head, tail]), whole)
  np.testing.assert_array_equal(np.concatenate([head_stats.nfe, tail_stats.nfe]),
                                whole_stats.nfe)
  assert len(timings) == 3 and all(t > 0 for t in timings)
  # A different first batch is a different key: the test above can fail.
  shifted, _ = gen.sample_in_batches(DENOISER, tokens[2:], jax.random.key(4), **kwargs)
  assert not np.array_equal(shifted, whole[2:])
