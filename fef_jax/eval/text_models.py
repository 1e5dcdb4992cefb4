"""The models of the text-quality experiment: one causal judge and the diffusion models.

Every model is trained by the project's training loop (`fef_jax.train.run`) from
one base config (data, sizes, optimizer), each in its own run directory
`workdir/<name>` (so a rerun resumes or skips each one):
- `judge`: causal (`attention="block_causal"`, `block_length=1`), trained with
  next-token cross-entropy (`config.loss.objective="causal"`); it scores, never
  samples;
- `bidirectional`: the masked diffusion model with full attention;
- `block_causal`: the same with attention blocks of `text_quality.block_length`
  positions (exact-cache FeF);
- `head`: the bidirectional model with a one-layer speculative head, whose
  sequential drafts FeF verifies (`drafter="head"`).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from fef_jax.eval import judge as judge_lib
from fef_jax.train import run

JUDGE = "judge"
VARIANTS = ("bidirectional", "block_causal", "head")


def training_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The training config of model `name` (`JUDGE` or one of `VARIANTS`).

  `config` is the experiment's config: the training fields shared by every model
  and `config.text_quality` (`block_length`, `judge_steps`: the judge's total
  steps, 0 for the shared `optimizer.total_steps`).

  Raises:
    ValueError: an unknown name.
  """
  if name != JUDGE and name not in VARIANTS:
    raise ValueError(f"unknown model {name!r}; expected {JUDGE!r} or one of {VARIANTS}")
  out = ml_collections.ConfigDict(config.to_dict())
  del out["text_quality"]
  out.sample.every = 0  # samples are this experiment's business, not the loop's
  out.model.update(attention="bidirectional", block_length=None, head_layers=0)
  out.loss.head_weight = 0.0
  if name == JUDGE:
    out.model.update(attention="block_causal", block_length=1, time_conditioning=False)
    out.loss.objective = "causal"
    out.checkpoint.best_metric = "eval_nll_bits"
    if config.text_quality.judge_steps:
      out.optimizer.total_steps = config.text_quality.judge_steps
  elif name == "block_causal":
    out.model.update(attention="block_causal", block_length=config.text_quality.block_length)
  elif name == "head":
    out.model.head_layers = 1
    out.loss.head_weight = 1.0
  return out


def train_all(config: ml_collections.ConfigDict, workdir: str, names: tuple[str, ...], *,
              progress: bool = True) -> dict[str, dict[str, Any]]:
  """`run.train` of each named model into `workdir/<name>` (resuming; a finished run
  only restores). Returns name -> `run.train`'s output."""
  return {name: run.train(training_config(config, name), f"{workdir}/{name}",
                          progress=progress)
          for name in names}


def as_judge(trained: dict[str, Any], text_fingerprint: str) -> judge_lib.Judge:
  """The `Judge` of a trained judge run (`run.train` or `run.restore_trained` output),
  after checking that it was trained with the tokenizer of the text it will score.

  Raises:
    judge.TokenizerMismatchError: the judge's tokenizer is not the one whose
      fingerprint is `text_fingerprint`.
    ValueError: the run's model is not causal.
  """
  fingerprint = trained["source"].tokenizer.fingerprint()
  judge_lib.check_tokenizer(fingerprint, text_fingerprint)
  return judge_lib.Judge(trained["model"], trained["state"].ema_params, fingerprint)
