"""Retrieval structures over trained embeddings: a Seismic-style blocked inverted index for explicit (concept)
vectors, with exact brute force as the reference. Imports only numpy and torch."""

from recsys.retrieval.seismic import SeismicIndex, exact_topk

__all__ = ["SeismicIndex", "exact_topk"]
