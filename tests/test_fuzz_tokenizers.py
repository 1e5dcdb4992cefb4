"""Tokenizers and chat templates on hostile strings: any text (control characters,
invalid surrogates, template syntax, very long runs) either round-trips or raises a
clear error; message content is data, never template code."""
import functools

import hypothesis
import hypothesis.strategies as st
import pytest

from fef_jax.data import tokenizers
from fef_jax.models import hf
from tests import hf_reference as ref

HOSTILE = ["", "\x00", "\ud800", "a\udfffb", "{{ 7 * 7 }}", "{% for x in range(9) %}x{% endfor %}",
           "<|mdm_mask|>", "<|endoftext|>" * 3, "\u202e\u200b\ufeff", "🙂" * 500, "a" * 20_000,
           "\r\n\t\x1b[31m", "{{ raise_exception('x') }}", "\\u0000"]
TEXT = st.one_of(st.text(max_size=200), st.sampled_from(HOSTILE))
SETTINGS = hypothesis.settings(max_examples=150, deadline=None, derandomize=True)


def _encodable(text):
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:  # lone surrogates are not text
    return False


@SETTINGS
@hypothesis.given(TEXT)
def test_byte_tokenizer_round_trips_text_and_refuses_lone_surrogates(text):
  tokenizer = tokenizers.ByteTokenizer()
  if not _encodable(text):
    with pytest.raises(UnicodeEncodeError):
      tokenizer.encode(text)
    return
  ids = tokenizer.encode(text)
  assert all(0 <= i < 256 for i in ids)
  assert tokenizer.decode(ids) == text


@functools.lru_cache(maxsize=None)
def _hf_tokenizer(directory):
  ref.make_llada(directory)
  return hf.load(directory).tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
  return _hf_tokenizer(str(tmp_path_factory.mktemp("llada")))


@SETTINGS
@hypothesis.given(text=TEXT)
def test_hf_tokenizer_and_chat_template_take_any_text(hf_tokenizer, text):
  if not _encodable(text):
    with pytest.raises((UnicodeEncodeError, TypeError, ValueError)):
      hf_tokenizer.encode(text)
    return
  ids = hf_tokenizer.encode(text)
  assert all(0 <= i < hf_tokenizer.vocab_size for i in ids)
  assert isinstance(hf_tokenizer.decode(ids), str)
  # Content is data: the template renders it verbatim (LLaDA's trims it), never evaluated.
  prompt = hf_tokenizer.apply_chat_template([{"role": "user", "content": text}])
  assert text.strip() in prompt
  chat_ids = hf_tokenizer.encode_chat([{"role": "user", "content": text}])
  assert all(0 <= i < hf_tokenizer.vocab_size for i in chat_ids)


def test_template_syntax_in_content_is_not_executed(hf_tokenizer):
  prompt = hf_tokenizer.apply_chat_template(
      [{"role": "user", "content": "{{ 7 * 7 }} {{ raise_exception('boom') }}"}])
  assert "{{ 7 * 7 }} {{ raise_exception('boom') }}" in prompt and "49" not in prompt


@pytest.mark.parametrize("messages", [
    [{"content": "no role"}],
    [{"role": "user"}],
    [{"role": "user", "content": 7}],
    ["not a dict"],
])
def test_malformed_messages_raise_a_tokenizer_error(hf_tokenizer, messages):
  with pytest.raises(hf.TokenizerError):
    hf_tokenizer.apply_chat_template(messages)


def test_decoding_negative_ids_is_refused_and_padded_ids_decode_to_nothing(hf_tokenizer):
  with pytest.raises(ValueError, match="token id -1 at position 1 is outside"):
    hf_tokenizer.decode([5, -1])
  ids = hf_tokenizer.encode("hello", add_special_tokens=False)
  # Ids past the tokenizer (a padded embedding table) decode to nothing.
  assert hf_tokenizer.decode(ids + [hf_tokenizer.vocab_size + 5]) == hf_tokenizer.decode(ids)
  with pytest.raises(ValueError, match="outside"):
    tokenizers.ByteTokenizer().decode([300])
