"""Offline evaluation through the serving path: `recd eval` and `recd tune`.

dataset (read and clean the input) -> split (per-user temporal hold-out) -> serving (load the training
part through the public API, ask Recommend) beside baselines (popularity) and exact (the same pipeline
with exhaustive retrieval) -> metrics -> report; tune fits the ranking weights on a validation split.
"""
