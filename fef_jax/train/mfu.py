"""Model FLOP utilization: achieved training FLOP/s over the devices' peak.

Peaks are dense bf16 matmul FLOP/s per chip from the vendors' data sheets; a
device kind that is not listed (CPUs among them) has no peak, so only the
achieved FLOP/s are reported for it.
"""
from __future__ import annotations

from typing import Optional

import jax

PEAK_BF16_FLOPS = {
    "NVIDIA H100": 989e12,   # SXM and 80GB HBM3 variants report this prefix
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,   # v5e
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,   # v6e (Trillium)
}


def peak_flops(device_kind: str) -> Optional[float]:
  """Peak bf16 FLOP/s of one device of this kind (prefix match), or None if unknown."""
  for name, peak in PEAK_BF16_FLOPS.items():
    if device_kind.startswith(name):
      return peak
  return None


def utilization(flops_per_token: float, tokens_per_second: float,
                devices: Optional[list] = None) -> dict[str, float]:
  """{"tflops": achieved TFLOP/s, "mfu": fraction of the devices' peak (if known)}."""
  devices = jax.devices() if devices is None else devices
  achieved = flops_per_token * tokens_per_second
  out = {"tflops": achieved / 1e12}
  peak = peak_flops(devices[0].device_kind)
  if peak is not None:
    out["mfu"] = achieved / (peak * len(devices))
  return out
