"""Training: optimiser, train state and step, the step budget, the fit loop and its hooks, checkpoints."""
