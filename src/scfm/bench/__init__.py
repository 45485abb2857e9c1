"""Benchmarks: evaluation sets, baselines, metrics, summary tables."""
