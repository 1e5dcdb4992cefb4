"""How many ops a sampler's compiled loops run per iteration: a proxy for GPU launches.

At batch 1 a small model's GPU call is launch-bound: each op of the loop body that
a step or round runs is a kernel launch of a few microseconds whatever its size (on
the H100 the comparison's three block-causal samplers took 1.6-2.3 us per op of
their CPU-compiled loop bodies per answer; op counts set the order of magnitude,
not all of it: see BENCHMARKS.md, "Where the time goes"). Counting those ops needs
no GPU: `while_bodies` reads the optimized HLO text of a compiled program and
returns, for every `while` loop, its body's ops; `sampler_loop_ops` does it for one
`fef_jax.sample` configuration. The count is the CPU compile's (XLA:GPU fuses
somewhat differently; JAX's own threefry keys hash in a `while` loop of their own
on CPU, which the samplers avoid, `fef_jax.unrolled_threefry`), so it ranks and
sizes loop overheads rather than predicting a GPU's kernel count exactly.
"""
from __future__ import annotations

import collections
import re
from typing import Any

import jax
import numpy as np

from fef_jax import api
from fef_jax import samplers

# Instructions that launch nothing: they name or regroup buffers.
_FREE = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast"})
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_OPCODE = re.compile(r"=\s*(?:\([^=]*?\)|\S+)\s+([a-z][\w\-]*)\(")
_BODY = re.compile(r"body=%?([\w.\-]+)")
_CALLEE = re.compile(r"(?:body|condition|calls|to_apply|true_computation|false_computation)"
                     r"=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_COMMENT = re.compile(r"/\*.*?\*/")  # e.g. /*index=5*/ inside long tuple types
_COPY_SHAPE = re.compile(r"=\s*([a-z]\w*\[[\d,]*\])(?:\{[^}]*\})?\s+copy\(")


def _computations(hlo_text: str) -> dict[str, list[str]]:
  """Instruction lines of each computation of an HLO module's text."""
  out: dict[str, list[str]] = {}
  name = None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line)
    if match:
      name = match.group(1)
      out[name] = []
    elif line.startswith("}"):
      name = None
    elif name is not None and " = " in line:
      out[name].append(line.strip())
  return out


def _opcode(instruction: str) -> str | None:
  match = _OPCODE.search(_COMMENT.sub("", instruction))
  return match.group(1) if match else None


def while_bodies(hlo_text: str) -> list[dict[str, Any]]:
  """Every `while` loop of an HLO module (optimized text, as `compiled.as_text()`).

  Returns:
    One dict per loop body, outermost first: `body` (its computation's name),
    `parent` (the computation holding the `while`), `depth` (1 for a loop in the
    entry computation or a computation it calls, +1 per enclosing loop body),
    `ops` (its instructions that launch work: everything but parameters,
    constants, tuples, tuple elements and bitcasts; a nested `while`,
    `conditional` or `call` counts as one), `kinds` (op name -> count) and
    `copies` (the shape of each `copy` op's result, e.g. `"f32[1,3,16,4,24]"`:
    the buffers XLA copies per iteration, often to keep a value that an
    in-place update overwrites readable).

  Raises:
    ValueError: the text holds no computation (not HLO text).
  """
  computations = _computations(hlo_text)
  if not computations:
    raise ValueError("no HLO computation found in the text")
  # Which computation calls which (loop bodies, called and fused computations,
  # branches), so that a loop inside a `call` from a loop body counts as nested.
  caller, bodies = {}, {}
  for name, lines in computations.items():
    for line in lines:
      line = _COMMENT.sub("", line)
      callees = _CALLEE.findall(line) + [
          callee.strip().lstrip("%") for branches in _BRANCHES.findall(line)
          for callee in branches.split(",")]
      for callee in callees:
        caller.setdefault(callee, name)
      if _opcode(line) == "while":
        match = _BODY.search(line)
        if match:
          bodies[match.group(1)] = name

  def depth(body: str) -> int:
    level, name = 1, bodies[body]
    while name in caller:
      level += name in bodies
      name = caller[name]
    return level

  rows = []
  for body, parent in bodies.items():
    kinds = collections.Counter(
        op for op in map(_opcode, computations.get(body, [])) if op and op not in _FREE)
    copies = [match.group(1) for match in map(_COPY_SHAPE.search, computations.get(body, []))
              if match]
    rows.append({"body": body, "parent": parent, "depth": depth(body),
                 "ops": sum(kinds.values()), "kinds": dict(kinds.most_common()),
                 "copies": copies})
  return sorted(rows, key=lambda r: (r["depth"], -r["ops"]))


def sampler_loop_ops(logits_fn, tokens_BxL: Any, key: jax.Array, method: str, *,
                     mask_id: int, **options: Any) -> list[dict[str, Any]]:
  """`while_bodies` of the program `fef_jax.sample(logits_fn, tokens_BxL, key, method,
  mask_id=mask_id, **options)` compiles on the default backend (compiled, not run).

  The loop of steps is the depth-1 body with the most ops; FeF's rounds are the
  largest depth-2 body (a round runs once per sequential call with a cache, after
  its step's refresh, if any).

  Raises:
    ValueError: a bad method or option (as `fef_jax.sample`).
  """
  config = samplers.make_config(method, mask_id, **options)
  tokens_BxL = jax.numpy.asarray(np.asarray(tokens_BxL), jax.numpy.int32)
  run = api._run  # pylint: disable=protected-access
  return while_bodies(run.lower(*api.split_denoiser(logits_fn), tokens_BxL, key, config)
                      .compile().as_text())
