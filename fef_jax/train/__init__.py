"""Training: masks, optimizer, train/eval steps, checkpoints."""
