"""Candidate sources: ANN over the shards, graph neighbours, popular items."""
