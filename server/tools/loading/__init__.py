"""Bulk loading of datasets (Parquet, CSV, JSONL) into a running recd through a CatalogWriter."""
