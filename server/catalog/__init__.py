"""The frontend's item catalogue: ids, rows, metadata and the FP16 embedding table used by ranking."""
