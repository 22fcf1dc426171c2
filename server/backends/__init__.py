"""Backends behind narrow interfaces: each role has an embedded default and a real implementation."""
