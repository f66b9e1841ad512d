"""ID embedding tables: the plainest side encoder, and matrix factorisation built from two of them."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from recsys.encoders.base import SideEncoder, TwoTower
from recsys.encoders.choices import check_choice

#: how an ID table starts (see :class:`IDEmbedding`).
IDInit = Literal["normal", "xavier"]


class IDEmbedding(SideEncoder):
    """One learned vector per row.

    Args:
        dim: embedding size.
        init: ``"normal"`` (std ``init_std``) or ``"xavier"`` (Xavier-normal, as RecBole's MF).
        init_std: standard deviation of the normal initialisation.

    Shapes:
        rows: [...] -> [..., dim]
    """

    def __init__(self, dim: int = 64, init: IDInit = "normal", init_std: float = 0.1) -> None:
        super().__init__()
        check_choice("init", init, IDInit)
        self.out_dim, self.init, self.init_std = dim, init, init_std
        self.table: nn.Embedding | None = None

    def bind(self, data, side: str) -> None:
        n = data.n_users if side == "user" else data.n_items
        self.table = nn.Embedding(n, self.out_dim)
        if self.init == "xavier":
            nn.init.xavier_normal_(self.table.weight)
        else:
            nn.init.normal_(self.table.weight, std=self.init_std)

    def forward(self, rows: Tensor) -> Tensor:
        return self.table(rows)

    def regularization(self, rows: Tensor) -> Tensor:
        return self.table(rows).pow(2).sum()


class MatrixFactorization(TwoTower):
    """Matrix factorisation: a user ID table and an item ID table scored by dot product.

    Args:
        dim: embedding size.
        init: see :class:`IDEmbedding`.
        init_std: see :class:`IDEmbedding`.
    """

    def __init__(self, dim: int = 64, init: IDInit = "normal", init_std: float = 0.1) -> None:
        super().__init__(IDEmbedding(dim, init, init_std), IDEmbedding(dim, init, init_std))
