"""Speed and cost measurements that the benchmark entry points and notebooks share.

`timing` (warm median timings, JSON + Markdown output), `loop_cost` (a sampler's
step or round against a bare denoiser call), `round_cost` (one verification round
over whole copies, block-local copies or the head) and `train_cost` (where a
training step's time goes). Evaluation of what models produce is in
`fef_jax.eval`; the sampler comparison there, which measures both, times with
`timing`.
"""
