"""Latent quantization: each embedding dimension snapped to a small learned scalar codebook (straight-through).

Item ``i`` is stored as ``D`` codebook indices of ``⌈log2 L⌉`` bits each, plus one shared ``[D, L]`` codebook:
``D·⌈log2 L⌉/8`` bytes per item instead of ``4·D``. Training sees the quantized items (a straight-through
estimator passes the gradient to the float embedding), so the ranking loss adapts to the grid; a codebook loss
moves the code values to the embeddings and a commitment loss keeps the embeddings near their codes (VQ-VAE).

Hsu et al., "Disentanglement via Latent Quantization", NeurIPS 2023 (a scalar codebook per dimension);
van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017 (codebook and commitment losses).
Factorized sub-codebooks (Factorized Quantization) are not implemented: per-dimension scalar codebooks are the
factorized case with one dimension per sub-codebook.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import EpochAware, StepOutput
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_choice
from recsys.encoders.wrapper import EncoderWrapper

#: which sides are quantized (see :class:`LatentQuantization`).
Sides = Literal["item", "both"]


class LatentQuantization(EpochAware, EncoderWrapper):
    """Quantizes the item side (or both sides) of any encoder to a per-dimension codebook of ``levels`` values.

    Args:
        encoder: the wrapped encoder.
        levels: codebook size per dimension ``L`` (2..256).
        sides: ``"item"`` (the stored table; queries stay float) or ``"both"``.
        weight: weight of the codebook loss; the commitment loss gets ``commitment × weight``.
        commitment: β of the commitment loss.
        calibrate_epochs: for this many first epochs the codebook is reset to quantiles of the current item table,
            so that it follows the embeddings' scale while they grow from their small initialisation.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, D], items [B, C, D])
    """

    def __init__(self, encoder: TwoSidedEncoder, levels: int = 16, sides: Sides = "item", weight: float = 1.0,
                 commitment: float = 0.25, calibrate_epochs: int = 3) -> None:
        super().__init__(encoder)
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be in [2, 256], got {levels}")
        check_choice("sides", sides, Sides)
        self.levels, self.sides, self.weight, self.commitment = levels, sides, weight, commitment
        self.calibrate_epochs = calibrate_epochs
        self.codebook = nn.Parameter(torch.linspace(-1.0, 1.0, levels).repeat(encoder.out_dim, 1))

    def bind_wrapper(self, data) -> None:
        if self.codebook.shape[0] != self.encoder.out_dim:  # the inner width came from the data
            self.codebook = nn.Parameter(torch.linspace(-1.0, 1.0, self.levels).repeat(self.encoder.out_dim, 1))
        self.calibrate()

    @torch.no_grad()
    def calibrate(self) -> None:
        """Set each dimension's codebook to ``L`` evenly spaced quantiles of the current item embeddings."""
        table = self.inner_item_table()
        probs = (torch.arange(self.levels, dtype=table.dtype, device=table.device) + 0.5) / self.levels
        self.codebook.copy_(torch.quantile(table.float(), probs, dim=0).T.to(self.codebook))

    def on_train_epoch_start(self, epoch: int) -> None:
        if isinstance(self.encoder, EpochAware):
            self.encoder.on_train_epoch_start(epoch)
        if epoch < self.calibrate_epochs:
            self.calibrate()

    def _sorted_codebook(self) -> Tensor:
        # Kept sorted so that nearest-code search is a binary search over midpoints; sort is differentiable.
        return self.codebook.sort(dim=1).values

    def codes(self, x: Tensor) -> Tensor:
        """Index of the nearest code of each coordinate.

        Shapes:
            x: [..., D] -> [..., D] int64 in [0, L)
        """
        cb = self._sorted_codebook().detach()
        mids = (cb[:, 1:] + cb[:, :-1]) / 2
        flat = x.detach().reshape(-1, x.shape[-1]).T.contiguous()
        return torch.searchsorted(mids.contiguous(), flat).T.reshape(x.shape)

    def quantize(self, x: Tensor) -> Tensor:
        """Nearest code values, differentiable with respect to the codebook (not to ``x``).

        Shapes:
            x: [..., D] -> [..., D]
        """
        cb = self._sorted_codebook()
        idx = self.codes(x)
        dims = torch.arange(x.shape[-1], device=x.device).expand_as(idx)
        return cb[dims, idx]

    def transform(self, x: Tensor, side: str, state=None) -> Tensor:
        if side == "query" and self.sides == "item":
            return x
        # Straight-through: exactly the value of q (x − x.detach() is 0), the gradient of x.
        return self.quantize(x).detach() + (x - x.detach())

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state=None) -> dict[str, Tensor]:
        if not self.weight:
            return {}
        query, cands = self.inner_rows(batch, inner)
        terms = []
        for x in [cands] if self.sides == "item" else [cands, query]:
            q = self.quantize(x)
            terms.append(F.mse_loss(q, x.detach()) + self.commitment * F.mse_loss(x, q.detach()))
        return {"quantization": self.weight * sum(terms)}

    @torch.no_grad()
    def serving_extras(self, tables_of) -> dict[str, Tensor]:
        """The items' codes into the sorted codebook, for ``--index quantized`` (``D·⌈log2 L⌉`` bits per item)."""
        _, items = tables_of(self.encoder)
        return {"codes": self.codes(items).to(torch.uint8), "codebook": self._sorted_codebook().detach()}

    def bits_per_dim(self) -> int:
        return max(1, math.ceil(math.log2(self.levels)))

    def bytes_per_item(self) -> float:
        """Bytes per item of the packed codes (the shared ``[D, L]`` float codebook is not per item)."""
        return self.out_dim * self.bits_per_dim() / 8
