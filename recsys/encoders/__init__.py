"""Encoders: side encoders (rows → embeddings) and two-sided encoders (queries and items)."""

from recsys.encoders.base import Encoder, RecEncoder, TwoTower
from recsys.encoders.id import IDEmbedding, MatrixFactorization

__all__ = ["Encoder", "RecEncoder", "TwoTower", "IDEmbedding", "MatrixFactorization"]
