"""Batch scoring: chunked top-k and Parquet output."""
