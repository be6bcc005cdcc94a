"""Baselines: classic thresholding (and, later, smp models)."""
