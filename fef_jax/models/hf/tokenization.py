"""A checkpoint's tokenizer (`tokenizer.json`, via `tokenizers`) and chat template.

The chat template is the Jinja template that `transformers` applies in
`apply_chat_template`: read from `chat_template.jinja` if present (newer
checkpoints), else from `tokenizer_config.json`'s `chat_template` (a string,
or a list of `{"name", "template"}` from which "default" is taken). It is
rendered with `jinja2` in a sandbox set up as `transformers` does
(`trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension, a JSON `tojson`
filter, `raise_exception` and `strftime_now`), with the special tokens of
`tokenizer_config.json` (`bos_token`, `eos_token`, ...) as variables, so the
templates of LLaDA-8B-Instruct and Dream-v0-Instruct-7B render as they do in
`transformers`. Chat templates are checkpoint-supplied code; the sandbox keeps
them from reaching Python internals.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

from fef_jax.models.hf.loading import CheckpointError
from fef_jax.models.hf.loading import read_json_object

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class TokenizerError(CheckpointError):
  """Missing or malformed tokenizer files, or a chat template that cannot be applied."""


def _raise_exception(message: str) -> None:
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
  # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def compile_template(source: str) -> jinja2.Template:
  """A chat template compiled in the sandboxed environment that `transformers` uses.

  Raises:
    TokenizerError: a template that does not parse.
  """
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(source)
  except jinja2.TemplateSyntaxError as e:
    raise TokenizerError(f"the chat template does not parse: {e}") from e


def _token_text(value: Any) -> str | None:
  """A special token as `tokenizer_config.json` stores it: a string or `{"content": ...}`."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _chat_template(checkpoint_dir: str, tokenizer_config: dict[str, Any]) -> str | None:
  path = os.path.join(checkpoint_dir, CHAT_TEMPLATE_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = tokenizer_config.get("chat_template")
  if isinstance(template, list):
    named = {entry.get("name"): entry.get("template") for entry in template}
    template = named.get("default")
  return template


class Tokenizer:
  """Text <-> token ids, and chat prompts rendered by the checkpoint's template.

  Attributes:
    tokenizer: the `tokenizers.Tokenizer` of `tokenizer.json`.
    chat_template: the Jinja source, or None for a checkpoint without one
      (base models).
    special_tokens: `bos_token`, `eos_token`, ... from `tokenizer_config.json`,
      the variables a chat template sees besides `messages`.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, chat_template: str | None,
               special_tokens: dict[str, str]):
    self.tokenizer = tokenizer
    self.chat_template = chat_template
    self.special_tokens = dict(special_tokens)
    self._template = None if chat_template is None else compile_template(chat_template)

  @classmethod
  def from_dir(cls, checkpoint_dir: str) -> "Tokenizer":
    """Reads `tokenizer.json`, and `tokenizer_config.json` / `chat_template.jinja` if present.

    Raises:
      TokenizerError: `tokenizer.json` missing or unreadable, a malformed
        `tokenizer_config.json`, or a chat template that does not parse.
    """
    path = os.path.join(checkpoint_dir, TOKENIZER_FILE)
    if not os.path.isfile(path):
      raise TokenizerError(f"{TOKENIZER_FILE} not found in {checkpoint_dir!r}")
    try:
      tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own Exception type on bad files
      raise TokenizerError(f"{path} cannot be read by `tokenizers`: {e}") from e
    config_path = os.path.join(checkpoint_dir, TOKENIZER_CONFIG_FILE)
    config = read_json_object(config_path, TokenizerError) if os.path.isfile(config_path) else {}
    special = {key: _token_text(value) for key, value in config.items()
               if key.endswith("_token") and _token_text(value) is not None}
    return cls(tokenizer, _chat_template(checkpoint_dir, config), special)

  @property
  def vocab_size(self) -> int:
    """Number of token ids, special tokens included."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    """The id of a token string (e.g. `"<|mdm_mask|>"`), or None if it is not in the vocabulary."""
    return self.tokenizer.token_to_id(token)

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor
    (e.g. a BOS), as `transformers`' `tokenizer(text)` does by default."""
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    """Text of token ids (any int sequence, e.g. a numpy row).

    Ids at or above `vocab_size` decode to nothing: a model's embedding table is
    often padded beyond its tokenizer (LLaDA-8B: 126,464 rows), so a sample may
    hold them.

    Raises:
      ValueError: a negative id (named with its position).
    """
    ids = [int(i) for i in ids]
    negative = [(position, i) for position, i in enumerate(ids) if i < 0]
    if negative:
      raise ValueError(f"token id {negative[0][1]} at position {negative[0][0]} is outside "
                       f"the vocabulary [0, {self.vocab_size})")
    return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: Sequence[dict[str, Any]], *,
                          add_generation_prompt: bool = True, **variables: Any) -> str:
    """The prompt text of a conversation, as `transformers`' `apply_chat_template(tokenize=False)`.

    Args:
      messages: `[{"role": "user", "content": "..."}, ...]`.
      add_generation_prompt: end with the header that opens the assistant's turn.
      **variables: extra template variables (override the special tokens).

    Raises:
      TokenizerError: a message that is not a dict with a string `role` and a
        string `content`, the checkpoint has no chat template, or the template
        raised (e.g. via `raise_exception` on an unsupported role order).
    """
    for index, message in enumerate(messages):
      if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
          or not isinstance(message.get("content"), str)):
        raise TokenizerError(f"messages[{index}] must be a dict with a string 'role' and a "
                             f"string 'content', got {str(message)[:100]}")
    if self._template is None:
      raise TokenizerError("this tokenizer has no chat_template (a base model?); "
                           "encode the prompt text directly")
    try:
      return self._template.render(messages=list(messages),
                                   add_generation_prompt=add_generation_prompt,
                                   **{**self.special_tokens, **variables})
    except jinja2.TemplateError as e:
      raise TokenizerError(f"the chat template failed: {e}") from e

  def encode_chat(self, messages: Sequence[dict[str, Any]], *,
                  add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `apply_chat_template(messages)`, encoded without adding special
    tokens (the template writes them), as `apply_chat_template(tokenize=True)` does."""
    text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    return self.encode(text, add_special_tokens=False)
