"""Training: the loop and its state (trainer, ema, phases, signals), the run folder and its resumes,
cross-validation, and what training sets up (determinism, GPU defaults, ImageNet weights, TensorBoard)."""
