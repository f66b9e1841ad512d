"""Factorized quantization of embeddings: product (PQ) and residual (RQ) codebooks, post-hoc or trained jointly.

An item of ``D`` floats is stored as ``M`` codes of ``⌈log2 K⌉`` bits each, plus shared codebooks:

* **product** (PQ): the vector is cut into ``M`` sub-vectors of ``D/M`` coordinates; sub-space ``m`` has its own
  ``K``-entry codebook and the item is the concatenation of its ``M`` codewords (Jégou, Douze & Schmid, "Product
  Quantization for Nearest Neighbor Search", IEEE TPAMI 2011). Codebooks: ``[M, K, D/M]``.
* **residual** (RQ): ``M`` full-width codebooks applied one after the other, each to what the previous levels left
  (the residual); the item is the sum of its ``M`` codewords, and the codes read coarse to fine, as semantic IDs
  (Chen, Guan & Wang, "Approximate Nearest Neighbor Search by Residual Vector Quantization", Sensors 2010; Rajput
  et al., "Recommender Systems with Generative Retrieval" (TIGER), NeurIPS 2023). Codebooks: ``[M, K, D]``.

Either way the inner product of a query with a quantized item is a sum of ``M`` table look-ups (asymmetric distance
computation, ADC: the query stays float, :mod:`recsys.scoring.index_pq`). Codebooks come from seeded k-means of an
item table (:func:`train_codebooks`, used at index-build time for ``--index pq`` / ``--index rq``), or are trained
with the model by :class:`ProductQuantization` (straight-through estimator, codebook and commitment losses as in
VQ-VAE: van den Oord et al., NeurIPS 2017; RQ-VAE's per-level losses for the residual kind).
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
from recsys.encoders.quantized import Sides
from recsys.encoders.wrapper import EncoderWrapper

__all__ = ["Kind", "ProductQuantization", "assign", "code_dtype", "decode", "encode", "kmeans", "train_codebooks"]

#: how the ``M`` codebooks combine (see the module docstring).
Kind = Literal["product", "residual"]

#: rows per chunk of the nearest-centroid search (bounds the [rows, K] distance block).
_CHUNK = 65536


def code_dtype(codewords: int) -> torch.dtype:
    """The smallest integer type that holds codes in ``[0, codewords)``: one byte up to 256 codewords."""
    return torch.uint8 if codewords <= 256 else torch.int32


def check_codebook_sizes(subspaces: int, codewords: int) -> None:
    """Raise a one-line ``ValueError`` for an ``M`` below 1 or a ``K`` outside ``[2, 65536]``."""
    if not isinstance(subspaces, int) or subspaces < 1:
        raise ValueError(f"subspaces must be an integer >= 1, got {subspaces!r}")
    if not isinstance(codewords, int) or not 2 <= codewords <= 65536:
        raise ValueError(f"codewords must be an integer in [2, 65536], got {codewords!r}")


@torch.no_grad()
def assign(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of each row's nearest centroid (squared Euclidean; the first one on ties).

    Shapes:
        x: [N, d]; centroids: [K, d] -> [N] int64
    """
    c = centroids.to(x.dtype)
    c_sq, c_t = (c * c).sum(1), c.T.contiguous()
    # ‖x‖² is the same for every centroid of a row, so ‖c‖² − 2x·c ranks them; addmm fuses it into the GEMM and
    # min(dim).indices is a single pass (argmin was several times slower on CPU).
    parts = [torch.addmm(c_sq, x[s:s + _CHUNK], c_t, alpha=-2).min(1).indices for s in range(0, len(x), _CHUNK)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def _assign_subspaces(parts: Tensor, codebooks: Tensor) -> Tensor:
    """:func:`assign` in every sub-space.

    Shapes:
        parts: [N, M, d]; codebooks: [M, K, d] -> [N, M] int64
    """
    # Sub-space-major copy: each sub-space's GEMM then reads contiguous rows (the strided view was slower).
    major = parts.transpose(0, 1).contiguous()
    return torch.stack([assign(major[m], codebooks[m]) for m in range(codebooks.shape[0])], dim=1)


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 20, seed: int = 0, max_points: int | None = None) -> Tensor:
    """Seeded k-means (k-means++ seeding, then Lloyd iterations): the same input and seed give the same centroids.

    With ``k`` at least the number of rows every row is its own centroid (quantization is then lossless);
    spare centroids repeat the first row. An emptied cluster is moved to the row farthest from its centroid.

    Args:
        x: points.
        k: centroids.
        iters: Lloyd iterations at most (stops early once the assignment is stable).
        seed: seed of the k-means++ draws and of the subsample.
        max_points: fit on a seeded subsample of this many rows (all when None), as faiss caps points per centroid.

    Shapes:
        x: [N, d] -> [k, d] (x's dtype and device)
    """
    x = x.detach()
    n = len(x)
    if n == 0:
        return x.new_zeros((k, x.shape[1]))
    gen = torch.Generator().manual_seed(seed)
    if max_points is not None and n > max_points:
        x = x[torch.randperm(n, generator=gen)[:max_points].to(x.device)]
        n = max_points
    if n <= k:
        return torch.cat([x, x[:1].expand(k - n, -1)])
    work = x.float()
    centroids = work.new_empty((k, work.shape[1]))
    # k-means++ seeding: each new centroid drawn with probability ∝ squared distance to the nearest one so far.
    first = int(torch.randint(n, (1,), generator=gen))
    centroids[0] = work[first]
    d2 = ((work - work[first]) ** 2).sum(1)
    for j in range(1, k):
        w = d2.cpu().double()
        pick = int(torch.multinomial(w, 1, generator=gen)) if float(w.sum()) > 0 else int(
            torch.randint(n, (1,), generator=gen))
        centroids[j] = work[pick]
        d2 = torch.minimum(d2, ((work - work[pick]) ** 2).sum(1))
    labels = None
    for _ in range(iters):
        new = assign(work, centroids)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, work)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(sums.dtype)
        empty = torch.nonzero(~filled).flatten()
        if len(empty):
            # Deterministic repair: the rows worst served by their centroid seed the empty clusters.
            err = ((work - centroids[labels]) ** 2).sum(1)
            far = torch.topk(err, min(len(empty), n)).indices
            centroids[empty[:len(far)]] = work[far]
    return centroids.to(x.dtype)


@torch.no_grad()
def train_codebooks(x: Tensor, subspaces: int, codewords: int, kind: Kind = "product", iters: int = 20,
                    seed: int = 0, max_points: int | None = None) -> Tensor:
    """Product or residual codebooks fitted to the rows of ``x`` by seeded k-means (see :func:`kmeans`).

    Args:
        x: the vectors to quantize (an item table).
        subspaces: ``M`` (product: must divide ``D``; residual: the number of levels).
        codewords: ``K`` per codebook.
        kind: ``"product"`` or ``"residual"``.
        iters, seed, max_points: :func:`kmeans` options (codebook ``m`` uses seed ``seed + m``).

    Shapes:
        x: [N, D] -> product [M, K, D/M] or residual [M, K, D]
    """
    check_choice("kind", kind, Kind)
    check_codebook_sizes(subspaces, codewords)
    n, dim = x.shape
    if kind == "product":
        if dim % subspaces:
            raise ValueError(f"subspaces={subspaces} must divide the embedding's {dim} dimensions")
        parts = x.detach().reshape(n, subspaces, dim // subspaces)
        return torch.stack([kmeans(parts[:, m], codewords, iters, seed + m, max_points) for m in range(subspaces)])
    books, residual = [], x.detach().clone()
    for m in range(subspaces):
        book = kmeans(residual, codewords, iters, seed + m, max_points)
        residual -= book[assign(residual, book)]
        books.append(book)
    return torch.stack(books)


@torch.no_grad()
def encode(x: Tensor, codebooks: Tensor, kind: Kind = "product") -> Tensor:
    """Each row's ``M`` codes: its nearest codeword per sub-space (product) or per residual level (residual).

    Shapes:
        x: [N, D]; codebooks: [M, K, D/M] or [M, K, D] -> [N, M] int64
    """
    m_books = codebooks.shape[0]
    if kind == "product":
        return _assign_subspaces(x.detach().reshape(len(x), m_books, -1), codebooks)
    residual, codes = x.detach().clone(), []
    for m in range(m_books):
        idx = assign(residual, codebooks[m])
        residual -= codebooks[m][idx].to(residual.dtype)
        codes.append(idx)
    return torch.stack(codes, dim=1)


def decode(codes: Tensor, codebooks: Tensor, kind: Kind = "product") -> Tensor:
    """The quantized vectors: codewords concatenated (product) or summed (residual).

    Shapes:
        codes: [N, M] integers in [0, K); codebooks: [M, K, D/M] or [M, K, D] -> [N, D]
    """
    codes = codes.long()
    words = codebooks[torch.arange(codebooks.shape[0], device=codes.device), codes]  # [N, M, d]
    return words.reshape(len(codes), -1) if kind == "product" else words.sum(1)


class ProductQuantization(EpochAware, EncoderWrapper):
    """Quantizes the item side (or both sides) of any encoder with ``M`` product or residual codebooks, jointly.

    Training sees the quantized items: a straight-through estimator passes the ranking loss's gradient to the float
    embeddings, a codebook loss moves the codewords to the embeddings they encode and a commitment loss keeps the
    embeddings near their codewords (VQ-VAE; per level for residual codebooks, as RQ-VAE). The codebooks start from
    seeded k-means of the item table (:func:`train_codebooks`) at bind time and again at the start of each of the
    first ``calibrate_epochs`` epochs, so that they follow the embeddings' scale while it grows from a small
    initialisation. ``recsys fit`` stores the items' codes, so ``--index pq:stored=true`` (or ``rq:stored=true``)
    serves them by asymmetric distance computation (:mod:`recsys.scoring.index_pq`).

    Jégou, Douze & Schmid, "Product Quantization for Nearest Neighbor Search", IEEE TPAMI 2011; residual: Chen, Guan
    & Wang, Sensors 2010, and the semantic IDs of Rajput et al. (TIGER), NeurIPS 2023.

    Args:
        encoder: the wrapped encoder.
        subspaces: ``M``, sub-spaces (product: must divide the encoder's width) or residual levels.
        codewords: ``K`` per codebook (2..65536; codes take ``⌈log2 K⌉`` bits).
        kind: ``"product"`` or ``"residual"``.
        sides: ``"item"`` (the stored table; queries stay float) or ``"both"`` (queries use the same codebooks).
        weight: weight of the codebook loss; the commitment loss gets ``commitment × weight``.
        commitment: β of the commitment loss.
        calibrate_epochs: epochs at whose start the codebooks are re-fitted by k-means of the item table.
        seed: seed of the k-means fits.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, D], items [B, C, D]); codebooks: [M, K, D/M] (product)
        or [M, K, D] (residual)
    """

    def __init__(self, encoder: TwoSidedEncoder, subspaces: int = 8, codewords: int = 256, kind: Kind = "product",
                 sides: Sides = "item", weight: float = 1.0, commitment: float = 0.25, calibrate_epochs: int = 3,
                 seed: int = 0) -> None:
        super().__init__(encoder)
        check_codebook_sizes(subspaces, codewords)
        check_choice("kind", kind, Kind)
        check_choice("sides", sides, Sides)
        self.subspaces, self.codewords, self.kind, self.sides = subspaces, codewords, kind, sides
        self.weight, self.commitment, self.calibrate_epochs, self.seed = weight, commitment, calibrate_epochs, seed
        self.codebooks = nn.Parameter(torch.zeros(self._shape(encoder.out_dim, strict=False)))

    def _shape(self, dim: int, strict: bool = True) -> tuple[int, int, int]:
        if self.kind == "residual":
            return self.subspaces, self.codewords, dim
        if strict and dim % self.subspaces:
            raise ValueError(f"subspaces={self.subspaces} must divide the encoder's {dim} dimensions "
                             "(kind='product' splits the embedding evenly)")
        # Before bind a data-dependent width may not be known yet: a placeholder, replaced in bind_wrapper.
        return self.subspaces, self.codewords, max(1, dim // self.subspaces)

    def bind_wrapper(self, data) -> None:
        shape = self._shape(self.encoder.out_dim)
        if tuple(self.codebooks.shape) != shape:  # the inner width came from the data
            self.codebooks = nn.Parameter(torch.zeros(shape, device=self.codebooks.device))
        self.calibrate()

    @torch.no_grad()
    def calibrate(self) -> None:
        """Re-fit the codebooks by seeded k-means of the current (inner) item table."""
        table = self.inner_item_table()
        books = train_codebooks(table.float(), self.subspaces, self.codewords, self.kind, seed=self.seed,
                                max_points=256 * self.codewords)
        self.codebooks.copy_(books.to(self.codebooks))

    def on_train_epoch_start(self, epoch: int) -> None:
        if isinstance(self.encoder, EpochAware):
            self.encoder.on_train_epoch_start(epoch)
        if epoch < self.calibrate_epochs:
            self.calibrate()

    def codes(self, x: Tensor) -> Tensor:
        """Each vector's ``M`` codes (nearest codeword per sub-space, or per residual level).

        Shapes:
            x: [..., D] -> [..., M] int64 in [0, K)
        """
        flat = x.detach().reshape(-1, x.shape[-1])
        return encode(flat, self.codebooks.detach().to(flat.dtype), self.kind).reshape(*x.shape[:-1],
                                                                                      self.subspaces)

    def _levels(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The quantized vectors (differentiable in the codebooks, not in ``x``) and each level's (input, codeword).

        Shapes:
            x: [..., D] -> ([..., D], M pairs of [n, d])
        """
        memo = self.__dict__.get("_step_memo")
        for seen, result in memo or ():
            if seen is x:
                return result
        flat = x.reshape(-1, x.shape[-1])
        books = self.codebooks.to(flat.dtype)
        idx = encode(flat, books.detach(), self.kind)  # [n, M]
        pairs = []
        if self.kind == "product":
            parts = flat.reshape(len(flat), self.subspaces, -1)
            for m in range(self.subspaces):
                pairs.append((parts[:, m], books[m][idx[:, m]]))
            q = torch.cat([w for _, w in pairs], dim=1)
        else:
            residual = flat
            for m in range(self.subspaces):
                word = books[m][idx[:, m]]
                pairs.append((residual, word))
                residual = residual - word.detach()
            q = torch.stack([w for _, w in pairs]).sum(0)
        if memo is not None:
            memo.append((x, (q.reshape(x.shape), pairs)))
        return q.reshape(x.shape), pairs

    def quantize(self, x: Tensor) -> Tensor:
        """The quantized vectors, differentiable with respect to the codebooks (not to ``x``).

        Shapes:
            x: [..., D] -> [..., D]
        """
        return self._levels(x)[0]

    def transform(self, x: Tensor, side: str, state=None) -> Tensor:
        if side == "query" and self.sides == "item":
            return x
        # Straight-through: exactly the value of the codewords (x − x.detach() is 0), the gradient of x.
        return self.quantize(x).detach() + (x - x.detach())

    def wrap_step(self, batch: Batch, inner: StepOutput, state=None) -> StepOutput:
        # The step's losses and its straight-through items quantize the same candidates: search the codes once.
        # The memo lives for this call only (plain attribute, not a module buffer; cleared even on failure).
        self.__dict__["_step_memo"] = []
        try:
            return super().wrap_step(batch, inner, state)
        finally:
            self.__dict__.pop("_step_memo", None)

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state=None) -> dict[str, Tensor]:
        if not self.weight:
            return {}
        query, cands = self.inner_rows(batch, inner)
        terms = []
        for x in [cands] if self.sides == "item" else [cands, query]:
            _, pairs = self._levels(x)
            # Mean over levels: the loss's scale does not grow with M (for PQ it is the whole vector's MSE).
            terms.append(sum(F.mse_loss(w, t.detach()) + self.commitment * F.mse_loss(t, w.detach())
                             for t, w in pairs) / len(pairs))
        return {"quantization": self.weight * sum(terms)}

    @torch.no_grad()
    def serving_extras(self, tables_of) -> dict[str, Tensor]:
        """The items' codes and the codebooks, for ``--index pq:stored=true`` / ``rq:stored=true``."""
        _, items = tables_of(self.encoder)
        return {"pq_codes": self.codes(items).to(code_dtype(self.codewords)),
                "pq_codebooks": self.codebooks.detach().float()}

    def bits_per_code(self) -> int:
        return max(1, math.ceil(math.log2(self.codewords)))

    def bytes_per_item(self) -> float:
        """Bytes per item of the packed codes, ``M·⌈log2 K⌉/8`` (the shared codebooks are not per item)."""
        return self.subspaces * self.bits_per_code() / 8
