"""Shared test helpers: conformance mixins and tiny fixtures with known answers."""

from recsys.testing.conformance import BaselineConformance, EncoderConformance
from recsys.testing.fixtures import checkerboard, group_separation, tiny_synthetic

__all__ = ["EncoderConformance", "BaselineConformance", "checkerboard", "group_separation", "tiny_synthetic"]
