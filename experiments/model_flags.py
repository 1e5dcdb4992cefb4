"""The flags that name the model of a sampling entry point (`generate`, `evaluate`): a
pretrained LLaDA / Dream checkpoint (`--checkpoint_dir`), or a run of `experiments.train`
on text (`--config` and `--workdir`)."""
import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from ml_collections import config_flags

from fef_jax import generate
from fef_jax.eval import completion
from fef_jax.train import sharding

CHECKPOINT = flags.DEFINE_string("checkpoint_dir", None, "A LLaDA / Dream checkpoint.")
CONFIG = config_flags.DEFINE_config_file("config", None, "Training config of --workdir.")
WORKDIR = flags.DEFINE_string("workdir", None, "A run of experiments.train on text data.")
BEST = flags.DEFINE_bool("best", False, "With --workdir: its best checkpoint, not the latest.")
CHAT = flags.DEFINE_bool("chat", False, "Wrap prompts in the checkpoint's chat template.")
DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                          "Checkpoint compute and parameter dtype.")


def _check_model_choice() -> None:
  """Raises `app.UsageError` unless the flags name one model, a checkpoint or a trained
  run (both `--config` and `--workdir`), without the other kind's options (a chat
  template and `--dtype` are a checkpoint's)."""
  trained = CONFIG.value is not None or WORKDIR.value is not None
  if bool(CHECKPOINT.value) == trained:
    raise app.UsageError("give --checkpoint_dir, or --config and --workdir (not both)")
  if CHECKPOINT.value:
    return
  if CONFIG.value is None or WORKDIR.value is None:
    raise app.UsageError("a trained model needs both --config and --workdir")
  if CHAT.value:
    raise app.UsageError("--chat needs a checkpoint's chat template (--checkpoint_dir)")
  if flags.FLAGS["dtype"].present:
    raise app.UsageError("--dtype is a checkpoint's; a trained model computes in its "
                         "config's dtype (--config.model.dtype=bfloat16)")


def completion_fn(key: jax.Array, **common) -> completion.CompletionFn:
  """The completion function of the model the flags name (`fef_jax.eval.completion`).

  A checkpoint's parameters are split over all devices (an `fsdp` mesh axis) when there
  are several, and so is each batch's rows (`batch_size` must then be a multiple of the
  device count); a trained run's latest (or `--best`) checkpoint is restored.

  Args:
    key: PRNG key of the sampler.
    **common: `gen_length`, `method`, `batch_size` and the sampler's options.

  Raises:
    app.UsageError: the flags name no model, both kinds, or options of the other kind.
  """
  _check_model_choice()
  if CHECKPOINT.value:
    from fef_jax.models import hf  # pylint: disable=import-outside-toplevel
    mesh = sharding.make_mesh(data=1, fsdp=-1) if jax.device_count() > 1 else None
    model = hf.load(CHECKPOINT.value, dtype=getattr(jnp, DTYPE.value), mesh=mesh)
    if mesh is not None:
      common["rows_sharding"] = generate.rows_over(mesh)
    return completion.hf_completion_fn(model, key, chat=CHAT.value, **common)
  return completion.trained_completion_fn(CONFIG.value, WORKDIR.value, key, best=BEST.value,
                                          **common)
