"""DSFormer dense × sparse factorization: DenseSparseLinear's known answers, the AlphaRec mapping, DenseSparseTable
around MF and LightGCN (the encoder contract, sparse codes, scoring from the codes), the options' errors."""

import pytest
import torch
from torch import nn

from recsys.data.batch import Batch
from recsys.encoders import DenseSparseAlphaRec, DenseSparseLinear, DenseSparseTable, LightGCN, MatrixFactorization
from recsys.encoders.dsformer import dense_sparse_mapping, dense_sparse_scores, index_bytes, sparsify_ste, topk_mask
from recsys.errors import UsageError
from recsys.losses import SoftmaxLoss
from recsys.scorers import CosineScorer
from recsys.testing import EncoderConformance, checkerboard
from tests.test_text import make_tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------- the layer
def test_topk_mask_and_straight_through():
    x = torch.tensor([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -0.2, 1.0]], requires_grad=True)
    mask = topk_mask(x, 2, dim=1)
    assert mask.tolist() == [[False, True, True, False], [True, False, False, True]]
    y = sparsify_ste(x, 2, dim=1)
    torch.testing.assert_close(y, torch.tensor([[0.0, -3.0, 2.0, 0.0], [4.0, 0.0, 0.0, 1.0]]))
    (y * torch.arange(1.0, 5.0)).sum().backward()
    # Straight-through: the masked entries get the gradient they would get unmasked.
    torch.testing.assert_close(x.grad, torch.arange(1.0, 5.0).expand(2, 4))
    assert sparsify_ste(x, 4, dim=1) is x


def test_dense_sparse_linear_is_dense_times_column_sparse():
    torch.manual_seed(0)
    layer = DenseSparseLinear(10, 6, rank=4, nonzeros_per_column=2)
    s = layer.sparse_factor()
    assert ((s != 0).sum(0) == 2).all()
    torch.testing.assert_close(s[s != 0], layer.sparse[s != 0])
    x = torch.randn(3, 5, 10)
    torch.testing.assert_close(layer(x), x @ (layer.dense @ s).T + layer.bias)
    torch.testing.assert_close(layer.weight(), layer.dense @ s)
    layer(x).sum().backward()
    assert (layer.sparse.grad != 0).all()  # every entry of S learns, in the support or not
    assert layer.parameter_count() == 6 * 4 + 10 * 2 + 6
    assert layer.stored_bytes() == 4 * layer.parameter_count() + 10 * 2 * 1
    assert index_bytes(256) == 1 and index_bytes(257) == 2 and index_bytes(70000) == 4


def test_full_support_is_a_plain_low_rank_layer():
    torch.manual_seed(0)
    layer = DenseSparseLinear(8, 5, rank=3, nonzeros_per_column=3, bias=False)
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), x @ layer.sparse.T @ layer.dense.T)


def test_dense_sparse_linear_trains_to_a_low_rank_target():
    """With ``k = r`` the layer is a rank-r product: it fits a rank-r linear map to high precision, through the
    same masked forward and straight-through backward as any k."""
    torch.manual_seed(0)
    target = torch.randn(12, 3) @ torch.randn(3, 16) / 4
    layer = DenseSparseLinear(16, 12, rank=3, nonzeros_per_column=3, bias=False)
    opt = torch.optim.Adam(layer.parameters(), lr=0.02)
    for _ in range(800):
        x = torch.randn(64, 16)
        loss = (layer(x) - x @ target.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float((layer.weight().detach() - target).norm() / target.norm()) < 1e-2


@pytest.mark.parametrize("kwargs,option", [({"rank": 0}, "rank"), ({"nonzeros_per_column": 5}, "nonzeros"),
                                           ({"nonzeros_per_column": 0}, "nonzeros"), ({"in_features": 0}, "in_")])
def test_bad_layer_options_are_refused(kwargs, option):
    args = {"in_features": 8, "out_features": 4, "rank": 4, "nonzeros_per_column": 2, **kwargs}
    with pytest.raises(UsageError, match=option):
        DenseSparseLinear(**args)


def test_mapping_factory_converts_alpharec_layers():
    mlp = nn.Sequential(nn.Linear(384, 12288), nn.LeakyReLU(), nn.Linear(12288, 64))
    dense = sum(p.numel() for p in mlp.parameters() if p.dim() == 2)
    assert dense == 384 * 12288 + 12288 * 64
    out = dense_sparse_mapping(mlp, rank=64, nonzeros_per_column=8)
    assert out is mlp  # converted in place
    first, last = out[0], out[2]
    assert isinstance(first, DenseSparseLinear) and isinstance(last, DenseSparseLinear)
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (384, 12288, 12288, 64)
    assert first.parameter_count() == 12288 * 64 + 384 * 8 + 12288
    # A layer the factorization would not shrink stays dense; a bias-free probe stays bias-free.
    small = nn.Linear(4, 4)
    assert dense_sparse_mapping(small, rank=4, nonzeros_per_column=2) is small
    probe = dense_sparse_mapping(nn.Linear(384, 64, bias=False), rank=16, nonzeros_per_column=4)
    assert isinstance(probe, DenseSparseLinear) and probe.bias is None


# ---------------------------------------------------------------------------------------------------- the table
class TestDenseSparseMF(EncoderConformance):
    def make_encoder(self):
        return DenseSparseTable(MatrixFactorization(dim=16), dim=8, nonzeros=4)


class TestDenseSparseMFItems(EncoderConformance):
    def make_encoder(self):
        return DenseSparseTable(MatrixFactorization(dim=16), dim=8, nonzeros=2, sides="item")


class TestDenseSparseLightGCN(EncoderConformance):
    def make_encoder(self):
        return DenseSparseTable(LightGCN(dim=16, n_layers=2), dim=8, nonzeros=4)


def _bound(enc):
    torch.manual_seed(0)
    data = checkerboard()
    enc.bind(data)
    return enc, data


def test_table_rows_are_sparse_codes_over_the_dictionary():
    enc, data = _bound(DenseSparseTable(MatrixFactorization(dim=16), dim=8, nonzeros=3))
    codes = enc.code(enc.encoder.item_table(), "item")
    assert ((codes != 0).sum(1) == 3).all()
    torch.testing.assert_close(enc.item_table(), codes @ enc.dictionary)
    batch = Batch(torch.arange(5))
    q_codes = enc.code(enc.encoder.encode_queries(batch), "query")
    assert ((q_codes != 0).sum(1) == 3).all()
    torch.testing.assert_close(enc.encode_queries(batch), q_codes @ enc.dictionary)
    assert enc.bytes_per_item() == 3 * (4 + 1)
    assert enc.parameter_count(n_rows=100) == 100 * 3 + 16 * 8


def test_item_sides_keeps_queries_dense():
    enc, _ = _bound(DenseSparseTable(MatrixFactorization(dim=16), dim=8, nonzeros=3, sides="item"))
    batch = Batch(torch.arange(5))
    torch.testing.assert_close(enc.encode_queries(batch), enc.encoder.encode_queries(batch) @ enc.dictionary)


def test_scores_from_sparse_codes_equal_dense_scores():
    enc, data = _bound(DenseSparseTable(LightGCN(dim=16, n_layers=2), dim=8, nonzeros=4))
    enc.eval()
    with torch.no_grad():
        enc.precompute()
        q, items = enc.encode_queries(Batch(torch.arange(data.n_users))), enc.item_table()
        enc.clear_cache()
        codes = enc.sparse_item_codes()
    assert codes.layout == torch.sparse_csr and codes.values().numel() == 4 * data.n_items
    torch.testing.assert_close(dense_sparse_scores(q, codes, enc.dictionary), q @ items.T)


def test_straight_through_reaches_pruned_code_entries():
    enc, data = _bound(DenseSparseTable(MatrixFactorization(dim=16), dim=8, nonzeros=2))
    enc.train()
    batch = Batch(torch.arange(4), torch.randint(0, data.n_items, (4, 3)))
    out = enc(batch)
    (out.query.unsqueeze(1) * out.candidates).sum().backward()
    grad = enc.encoder.user.table.weight.grad[batch.users]
    assert (grad != 0).sum(1).min() > 2  # more than the 2 kept entries per row get a gradient


@pytest.mark.parametrize("kwargs,option", [({"nonzeros": 17}, "nonzeros"), ({"dim": 0}, "dim"),
                                           ({"sides": "user"}, "sides")])
def test_bad_table_options_are_refused(kwargs, option):
    with pytest.raises(UsageError, match=option):
        DenseSparseTable(MatrixFactorization(dim=16), **kwargs)


# ---------------------------------------------------------------------------------------------------- AlphaRec
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsformer_lm")
    return str(make_tiny_bert(root / "model")), str(root / "cache")


class TestDenseSparseAlphaRec(EncoderConformance):
    scorer = CosineScorer(0.15)
    loss = SoftmaxLoss()
    lr = 0.01
    weight_decay = 1e-6
    checkerboard_epochs = 10

    @pytest.fixture(autouse=True)
    def _lm(self, tiny_lm):
        self.lm_path, self.cache_dir = tiny_lm

    def make_encoder(self):
        return DenseSparseAlphaRec(rank=4, nonzeros_per_column=2, dim=8, mapping="mlp", hidden_dim=16,
                                   lm_path=self.lm_path, cache_dir=self.cache_dir)

    def test_mapping_is_factorized_and_kept_on_rebind(self):
        enc, data = self._bound()
        layers = [m for m in enc.mapping if isinstance(m, DenseSparseLinear)]
        assert [(m.in_features, m.out_features) for m in layers] == [(32, 16), (16, 8)]
        mapping = enc.mapping
        enc.bind(data)
        assert enc.mapping is mapping


def test_table_keeps_the_wrapped_encoders_capabilities():
    from recsys.capabilities import FoldsIn, ScoresAgainstTable, capabilities_of

    assert capabilities_of(DenseSparseTable(MatrixFactorization(dim=16), dim=8)) == (FoldsIn,)
    enc, data = _bound(DenseSparseTable(LightGCN(dim=16, n_layers=1), dim=8, nonzeros=4))
    assert isinstance(enc, ScoresAgainstTable)
    out = enc.training_tables(Batch(torch.arange(4), torch.randint(0, data.n_items, (4, 3))))
    with torch.no_grad():
        torch.testing.assert_close(out.candidates, enc.item_table())  # the sparse-coded table, whole
