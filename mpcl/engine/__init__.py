"""Training loop, evaluation and checkpoints; knows nothing of Ray."""
