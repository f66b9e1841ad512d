"""Encoders: side encoders (rows → embeddings) and two-sided encoders (queries and items)."""

from recsys.encoders.base import SideEncoder, TwoSidedEncoder, TwoTower
from recsys.encoders.id import IDEmbedding, MatrixFactorization

__all__ = ["SideEncoder", "TwoSidedEncoder", "TwoTower", "IDEmbedding", "MatrixFactorization"]
from recsys.encoders.graph import GraphEncoder  # noqa: E402  (torch_geometric is imported lazily inside)
from recsys.encoders.lightgcn import LightGCN  # noqa: E402
from recsys.encoders.ngcf import NGCF, NGCFVariant, OfficialNGCF, PaperNGCF  # noqa: E402

__all__ += ["GraphEncoder", "LightGCN", "NGCF", "NGCFVariant", "OfficialNGCF", "PaperNGCF"]
from recsys.encoders.language import AlphaRec, LinearProbe  # noqa: E402  (transformers is imported lazily inside)

__all__ += ["AlphaRec", "LinearProbe"]
from recsys.encoders.recformer import (  # noqa: E402  (transformers is imported lazily inside)
    Backbone,
    EpochTable,
    FrozenTable,
    ItemTableMode,
    Recformer,
    TrainableTable,
)
from recsys.encoders.sasrec import SASRec  # noqa: E402

__all__ += ["Backbone", "EpochTable", "FrozenTable", "ItemTableMode", "Recformer", "SASRec", "TrainableTable"]
from recsys.encoders.unified import (  # noqa: E402
    FeatureEmbedding,
    FeatureTwoTower,
    PerFeatureTables,
    SingleHashTable,
    TableLayout,
    UnifiedTables,
)

__all__ += ["FeatureEmbedding", "FeatureTwoTower", "PerFeatureTables", "SingleHashTable", "TableLayout",
            "UnifiedTables"]
from recsys.encoders.sesa import SESA  # noqa: E402  (transformers is imported lazily inside)

__all__ += ["SESA"]
from recsys.encoders.binary import BinaryCodes  # noqa: E402
from recsys.encoders.compatible import Compatible  # noqa: E402
from recsys.encoders.dsformer import DenseSparseAlphaRec, DenseSparseLinear, DenseSparseTable  # noqa: E402
from recsys.encoders.lowrank import LowRank  # noqa: E402
from recsys.encoders.matryoshka import Matryoshka  # noqa: E402
from recsys.encoders.quantized import LatentQuantization  # noqa: E402
from recsys.encoders.wrapper import EncoderWrapper  # noqa: E402

__all__ += ["BinaryCodes", "Compatible", "EncoderWrapper", "LatentQuantization", "LowRank", "Matryoshka"]
__all__ += ["DenseSparseAlphaRec", "DenseSparseLinear", "DenseSparseTable"]
from recsys.encoders.product_quantized import ProductQuantization  # noqa: E402

__all__ += ["ProductQuantization"]
from recsys.encoders.compatible import BasisTransformation  # noqa: E402
from recsys.encoders.simplex import StationarySimplex  # noqa: E402

__all__ += ["BasisTransformation", "StationarySimplex"]
from recsys.encoders.principal import PrincipalAxes  # noqa: E402

__all__ += ["PrincipalAxes"]
