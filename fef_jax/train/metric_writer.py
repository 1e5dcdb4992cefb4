"""Training metrics to JSON lines and TensorBoard event files, side by side.

`workdir/metrics.jsonl` holds one JSON object per logged step (easy to load in
pandas); `workdir/tensorboard/` holds event files that `tensorboard --logdir`
reads (scalars, and text for periodic samples), written with `tensorboardX`,
which needs no TensorFlow.
"""
from __future__ import annotations

import importlib
import json
import numbers
import os
import threading
from typing import Any


def import_in_background() -> threading.Thread:
  """Starts importing `tensorboardX` on a daemon thread and returns the thread.

  A run calls this first thing, so that the import (which pulls in torch where it is
  installed) runs beside its data and init phases; a `MetricWriter` made later waits
  for it (Python lets one thread import a module while others wait for it). If the
  import fails, the thread reports it and the `MetricWriter` raises the ImportError.
  """
  thread = threading.Thread(target=importlib.import_module, args=("tensorboardX",),
                            name="import-tensorboardX", daemon=True)
  thread.start()
  return thread


class MetricWriter:
  """Appends metrics to `workdir/metrics.jsonl` and `workdir/tensorboard/`.

  A resumed run appends too: steps it redoes after its last checkpoint are
  logged again (readers keep the last record of each step).
  """

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._samples = open(os.path.join(workdir, "samples.jsonl"), "a")
    # Imported here, not with the module: tensorboardX imports torch where it is installed
    # (~0.8 s on the 2-core CPU), which every entry point that imports the training code
    # (compare, evaluate, generate) would pay; a training run starts it early
    # (`import_in_background`) and waits for what is left here (its startup phase "writer").
    import tensorboardX  # pylint: disable=import-outside-toplevel
    self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, metrics: dict[str, Any]) -> None:
    """Logs `metrics` (with `step`) as one JSON line and its numbers as TB scalars
    (tensorboardX turns characters outside `[A-Za-z0-9_./-]` in names into `_`)."""
    self._jsonl.write(json.dumps({**metrics, "step": step}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      if (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and name != "step"):
        self._tensorboard.add_scalar(name, float(value), step)
    self._tensorboard.flush()

  def texts(self, step: int, name: str, texts: list[str]) -> None:
    """Logs sample texts: a TB text summary and one line of `samples.jsonl`."""
    self._samples.write(json.dumps({"step": step, "name": name, "texts": texts}) + "\n")
    self._samples.flush()
    # TensorBoard renders text as Markdown: keep the samples verbatim in code blocks.
    body = "\n\n".join("    " + t.replace("\n", "\n    ") for t in texts)
    self._tensorboard.add_text(name, body, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._samples.close()
    self._tensorboard.close()
