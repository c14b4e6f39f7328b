"""Inference and evaluation: sliding window and slice stacks, metrics, surface distances, post-processing, scoring, reports."""
