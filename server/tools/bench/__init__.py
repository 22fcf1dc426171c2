"""Benchmarks (`recd bench ...`): each figure is reported beside its reference measured in the same run."""
