"""Benchmarks of Siamese-Diffusion Studio: our objective and sampler against the naive reference and the
diffusers pipeline, on the same weights, inputs and seeds. Scripts that print figures, never timed tests.

    python -m bench --quick          # or: python bench/run.py --quick

See docs/PERFORMANCE.md for the figures and the commands behind them.
"""
