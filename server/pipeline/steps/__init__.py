"""The named steps of the Recommend and SimilarItems pipelines, one job each."""
