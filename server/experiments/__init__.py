"""Experiments: A/B variants from assignment to per-variant outcomes."""
