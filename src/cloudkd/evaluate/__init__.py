"""Evaluation beyond one prediction folder: the real-chip benchmark (every method side by side) and the
optional pretrained peer."""
