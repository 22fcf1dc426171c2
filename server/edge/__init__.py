"""The edge tier: a cache in front of the frontends that serves the same Recommender API (`recd edge`)."""
