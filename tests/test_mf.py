"""Matrix factorisation through the shared encoder contract."""

from recsys.encoders import MatrixFactorization
from recsys.testing import EncoderConformance


class TestMatrixFactorization(EncoderConformance):
    def make_encoder(self):
        return MatrixFactorization(dim=8)
