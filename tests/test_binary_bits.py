"""BinaryCodes with a code length independent of the float width (``bits``): the projection, the code loss on the
projected signs, the unchanged default, the Hamming and faiss binary indexes at the new length, the contract."""

import numpy as np
import pytest
import torch

from recsys.data.batch import Batch
from recsys.encoders import BinaryCodes, LightGCN, MatrixFactorization
from recsys.encoders.binary import code_ranking_loss, sign_ste
from recsys.errors import UsageError
from recsys.scoring.cascade import hamming_distances, pack_bits
from recsys.scoring.index import ServingTables, parse_index_spec
from recsys.testing import EncoderConformance, checkerboard

pytestmark = pytest.mark.usefixtures("one_thread")


class TestBinaryBitsMF(EncoderConformance):
    def make_encoder(self):
        return BinaryCodes(MatrixFactorization(dim=16), bits=32)


class TestBinaryBitsLightGCN(EncoderConformance):
    def make_encoder(self):
        return BinaryCodes(LightGCN(dim=16, n_layers=2), bits=24)


def _bound(enc, seed=0):
    torch.manual_seed(seed)
    data = checkerboard()
    enc.bind(data)
    return enc, data


@pytest.mark.parametrize("bits", [16, 48, 256])
def test_bits_sets_the_code_length_and_projects(bits):
    enc, data = _bound(BinaryCodes(MatrixFactorization(dim=32), bits=bits))
    assert enc.out_dim == bits and enc.projection.shape == (32, bits)
    inner = enc.encoder.item_table()
    torch.testing.assert_close(enc.item_table(), inner @ enc.projection)
    assert enc.bytes_per_item() == bits / 8
    # Orthogonal start: a widening projection keeps inner products, a narrowing one is a projection.
    p = enc.projection.detach()
    eye = torch.eye(min(32, bits))
    torch.testing.assert_close(p @ p.T if bits >= 32 else p.T @ p, eye, atol=1e-5, rtol=0)


def test_code_loss_is_on_the_projected_signs_and_trains_the_projection():
    enc, data = _bound(BinaryCodes(MatrixFactorization(dim=16), bits=40))
    enc.train()
    batch = Batch(torch.arange(8), torch.randint(0, data.n_items, (8, 4)))
    out = enc(batch)
    q = enc.encoder.user.table.weight[batch.users] @ enc.projection
    c = enc.encoder.item.table.weight[batch.items] @ enc.projection
    want = code_ranking_loss(enc.code_loss, sign_ste(q), sign_ste(c), batch)
    torch.testing.assert_close(out.losses["codes"], want)
    out.losses["codes"].backward()
    assert enc.projection.grad.abs().sum() > 0 and enc.encoder.item.table.weight.grad.abs().sum() > 0


def test_default_is_unchanged():
    """bits=None: no projection, no new state, the inner encoder's embeddings served as before."""
    enc, _ = _bound(BinaryCodes(MatrixFactorization(dim=16)))
    assert enc.projection is None and enc.out_dim == 16
    assert set(enc.state_dict()) == {"encoder.user.table.weight", "encoder.item.table.weight"}
    torch.testing.assert_close(enc.item_table(), enc.encoder.item_table())


@pytest.mark.parametrize("bits", [15, 257, 64.0, True])
def test_bad_bits_are_refused(bits):
    with pytest.raises(UsageError, match="bits"):
        BinaryCodes(MatrixFactorization(dim=16), bits=bits)


@pytest.mark.parametrize("bits", [24, 40, 128])
def test_hamming_indexes_serve_the_trained_code_length(bits):
    enc, data = _bound(BinaryCodes(MatrixFactorization(dim=16), bits=bits))
    enc.eval()
    with torch.no_grad():
        items = enc.item_table()
        queries = enc.encode_queries(Batch(torch.arange(data.n_users)))
    want = hamming_distances(pack_bits(queries), pack_bits(items))
    # The codes the index packs are the trained sign(x·P) codes: ±1 inner products give D − 2·hamming.
    signs_q, signs_i = enc.codes(queries).numpy(), enc.codes(items).numpy()
    np.testing.assert_array_equal(signs_q @ signs_i.T, bits - 2 * want.astype(np.int64))
    rows = torch.arange(data.n_users)
    tables = ServingTables(queries, items)
    scores = parse_index_spec("hamming:codes_only=true").build(tables).score_function()(rows, None)
    torch.testing.assert_close(scores, -torch.from_numpy(want).float())
    pytest.importorskip("faiss")
    index = parse_index_spec("faiss:binary").build(tables)
    assert index.bytes_per_item() == bits // 8
    ids, got = index.search(queries, 5)
    best = np.sort(want, axis=1)[:, :5]
    np.testing.assert_array_equal(-got.numpy(), best)
