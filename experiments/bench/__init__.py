"""Benchmarks: `python -m experiments.bench.conv` (every convolution formulation, per layer, chain, 2D, upsampling).

The model-level benchmarks (`experiments/benchmark.py`, `bench_gpu.py`) and their helpers still sit in `experiments/`.
"""
