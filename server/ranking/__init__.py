"""Ranking: a linear model over similarity and side features, scored in FP16 batches."""
