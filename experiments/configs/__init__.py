"""Experiment configs: one module per experiment, presets as data."""
