"""Experiment logic that entry points and notebooks share.

Benchmark harnesses (model-agnostic: each takes a `generate_fn` mapping a batch
of prompts to a batch of completions): `gsm8k` (exact-match accuracy) and
`code` (MBPP and HumanEval pass@1, run in the `sandbox`), with the statistics
in `metrics`.
"""
