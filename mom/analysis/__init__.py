"""Measuring models: routing statistics and their reports, measured FLOPs and memory, pruning, side-by-side benchmarks
and plots of runs."""
