"""SASRec: causal self-attention over a user's item-ID sequence; the last position's output is the query.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. This follows RecBole's SASRec (the peer
baseline of protocol P2): item + learnt position embeddings → LayerNorm → dropout, post-LayerNorm Transformer blocks
with causal attention, GELU feed-forward, item embeddings shared between input and output, trained with softmax
cross-entropy over the whole catalogue (``RecModel(negatives=FullCatalogue())`` + ``SoftmaxLoss``). Two ways to feed it:

* ``data.loader.examples: sequences`` (default config): the original all-positions training, one window per user
  per epoch and a target at every position, so one forward pass gives up to ``max_len`` training signals;
* ``data.loader.examples: prefixes``: every prefix as its own example, RecBole's recipe (about ``max_len`` times
  the compute per epoch for the same signals).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import EncodesPositions, FoldsIn, Histories
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_size
from recsys.errors import UsageError

__all__ = ["SASRec", "SASRecBlock"]


class SASRecBlock(nn.Module):
    """Multi-head self-attention and a feed-forward layer, each with dropout, a residual and LayerNorm after it.

    Args:
        dim: model width.
        heads: attention heads.
        inner_dim: feed-forward width.
        dropout: hidden dropout; ``attn_dropout``: dropout on attention weights.

    Shapes:
        x: [B, L, D]; mask: [B, 1, L, L] bool (True = may attend) -> [B, L, D]
    """

    def __init__(self, dim: int, heads: int, inner_dim: int, dropout: float, attn_dropout: float,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.ff = nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU(), nn.Linear(inner_dim, dim))
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.ln1(x + self.drop(self.out(a.transpose(1, 2).reshape(B, L, D))))
        return self.ln2(x + self.drop(self.ff(x)))


class SASRec(EncodesPositions, FoldsIn, TwoSidedEncoder):
    """SASRec: the query is the causal Transformer's output at the most recent history item.

    Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (RecBole's variant, see the module doc).

    Args:
        dim: embedding and model width (RecBole: 64).
        num_layers: Transformer blocks (2).
        num_heads: attention heads (2).
        max_len: history items read per query (50); also the framework's ``history_len``.
        dropout: embedding and hidden dropout (RecBole: 0.5; the paper: 0.2 on MovieLens).
        attn_dropout: attention-weight dropout (None = ``dropout``).
        inner_dim: feed-forward width (None = 4 × dim).
        init_std: normal initialisation std of every weight (0.02).

    Shapes:
        batch.history: [B, L] (most recent last, -1 padded) -> query [B, dim]; items [...] -> [..., dim]
    """

    def __init__(self, dim: int = 64, num_layers: int = 2, num_heads: int = 2, max_len: int = 50,
                 dropout: float = 0.5, attn_dropout: float | None = None, inner_dim: int | None = None,
                 init_std: float = 0.02) -> None:
        super().__init__()
        owner = type(self).__name__
        for name, value, low in (("dim", dim, 1), ("num_layers", num_layers, 0), ("num_heads", num_heads, 1),
                                 ("max_len", max_len, 1)):
            check_size(owner, name, value, minimum=low)
        check_size(owner, "inner_dim", inner_dim, optional=True)
        if dim % num_heads:
            raise UsageError(f"{owner} dim {dim} is not a multiple of num_heads {num_heads}")
        self.out_dim, self.history_len, self.init_std = dim, max_len, init_std
        self.positions = nn.Embedding(max_len, dim)
        self.ln = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        ad = dropout if attn_dropout is None else attn_dropout
        self.blocks = nn.ModuleList(SASRecBlock(dim, num_heads, inner_dim or 4 * dim, dropout, ad)
                                    for _ in range(num_layers))
        self.items: nn.Embedding | None = None
        self._n_items = 0

    def bind(self, data) -> None:
        self._n_items = data.n_items
        if self.items is None:
            # Row n_items is the padding item: zero and never updated.
            self.items = nn.Embedding(data.n_items + 1, self.out_dim, padding_idx=data.n_items)
            self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    @property
    def n_items(self) -> int:
        return self._n_items

    def sequence_output(self, history: Tensor) -> Tensor:
        """Hidden states of every position.

        Shapes:
            history: [B, L] -> [B, L', dim] with L' = min(L, max_len)
        """
        h = history[:, -self.history_len:]
        L = h.shape[1]
        real = h >= 0
        # Positions count back from the most recent item (always the last slot), as the original left-padded code.
        x = self.items(torch.where(real, h, self._n_items)) + self.positions.weight[-L:]
        x = self.drop(self.ln(x))
        # Causal, real keys only; each position may always attend to itself so that the padding rows of a
        # left-padded sequence stay finite (their outputs are never read).
        idx = torch.arange(L, device=h.device)
        causal = idx[None, :] <= idx[:, None]
        mask = (causal[None] & real[:, None, :]) | torch.eye(L, dtype=torch.bool, device=h.device)[None]
        mask = mask[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def encode_queries(self, batch: Batch) -> Tensor:
        if batch.history is None:
            raise ValueError("SASRec reads histories: the batch has none (history_len must be > 0)")
        return self.sequence_output(batch.history)[:, -1]

    def fold_in(self, histories: Histories) -> Tensor:
        """The query of a user given by a history alone: the same pass as a training user's last position.

        Shapes:
            histories: B users -> [B, dim]
        """
        dev = self.items.weight.device
        return self.sequence_output(torch.from_numpy(histories.sequences(self.history_len)).to(dev))[:, -1]

    def encode_query_positions(self, batch: Batch) -> Tensor:
        """Queries at every history position (position t sees items ≤ t): all-positions training.

        Shapes:
            batch.history: [B, L] -> [B, L, dim]
        """
        return self.sequence_output(batch.history)

    def encode_items(self, items: Tensor) -> Tensor:
        return self.items(items)

    def item_table(self, chunk_size: int = 65536) -> Tensor:
        table = self.items.weight[:self._n_items]
        # A view of a parameter keeps requires_grad even under no_grad; scoring tables must not.
        return table if torch.is_grad_enabled() else table.detach()
