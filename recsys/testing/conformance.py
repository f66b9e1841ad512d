"""Conformance mixins: every encoder and model test class reuses these, so a new family's tests are a few lines.

Usage::

    class TestMF(EncoderConformance):
        def make_encoder(self):
            return MatrixFactorization(dim=8)
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.data.batch import Batch
from recsys.testing.fixtures import checkerboard, group_separation


def _embeddings(out) -> tuple:
    return out.query, out.candidates


class EncoderConformance:
    """Contract tests for a ``TwoSidedEncoder``. Subclasses implement :meth:`make_encoder`.

    The checkerboard test trains through ``RecModel`` and a Lightning ``Trainer`` (Adam, the class attributes
    ``scorer``, ``loss``, ``negatives``, ``num_negatives``, ``reg_weight``, ``lr``, ``weight_decay``) and asks for a
    held-out-vs-other-group AUC ≥ 0.9. Set ``learns_checkerboard = False`` for encoders that cannot fit it from IDs
    alone.
    """

    learns_checkerboard = True
    checkerboard_epochs = 30
    scorer = None
    loss = None
    negatives = None
    num_negatives = 4
    reg_weight = 0.0
    lr = 0.01
    weight_decay = 1e-3

    def make_encoder(self):
        raise NotImplementedError

    def make_data(self):
        return checkerboard()

    def _bound(self, seed: int = 0):
        torch.manual_seed(seed)
        data = self.make_data()
        enc = self.make_encoder()
        enc.bind(data)
        return enc, data

    def _batch(self, data, n_neg: int = 3) -> Batch:
        users = torch.arange(min(8, data.n_users))
        items = torch.randint(0, data.n_items, (len(users), 1 + n_neg))
        hist = None
        return Batch(users, items, hist)

    def _with_history(self, enc, data, batch: Batch) -> Batch:
        if enc.history_len:
            batch.history = torch.from_numpy(data.history(batch.users.numpy(), "train", enc.history_len))
        return batch

    def test_forward_shapes(self):
        enc, data = self._bound()
        batch = self._with_history(enc, data, self._batch(data))
        out = enc(batch)
        q, c = out.query, out.candidates
        assert q.shape == (len(batch.users), enc.out_dim)
        assert c.shape == (*batch.items.shape, enc.out_dim)
        assert torch.isfinite(q).all() and torch.isfinite(c).all()

    def test_item_table_matches_encode_items(self):
        enc, data = self._bound()
        enc.eval()
        enc.precompute()
        table = enc.item_table()
        assert table.shape == (data.n_items, enc.out_dim)
        idx = torch.tensor([0, data.n_items - 1])
        torch.testing.assert_close(table[idx], enc.encode_items(idx))
        enc.clear_cache()

    def test_cached_tables_match_uncached(self):
        enc, data = self._bound()
        enc.eval()
        batch = self._with_history(enc, data, self._batch(data))
        with torch.no_grad():
            q1, c1 = _embeddings(enc(batch))
            enc.precompute()
            q2, c2 = _embeddings(enc(batch))
            enc.clear_cache()
        torch.testing.assert_close(q1, q2)
        torch.testing.assert_close(c1, c2)

    def test_gradients_flow(self):
        enc, data = self._bound()
        enc.train()
        batch = self._with_history(enc, data, self._batch(data))
        q, c = _embeddings(enc(batch))
        (q.unsqueeze(1) * c).sum().backward()
        grads = [p.grad for p in enc.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)

    def test_state_dict_round_trip(self):
        enc, data = self._bound(seed=0)
        other, _ = self._bound(seed=1)
        other.load_state_dict(enc.state_dict())
        enc.eval()
        other.eval()
        batch = self._with_history(enc, data, self._batch(data))
        with torch.no_grad():
            torch.testing.assert_close(_embeddings(enc(batch)), _embeddings(other(batch)))

    def test_learns_checkerboard(self):
        """Trained through ``RecModel`` and a Lightning ``Trainer`` (the real step: penalties, extra losses,
        the negatives strategy), the encoder separates the checkerboard's groups."""
        if not self.learns_checkerboard:
            return
        from functools import partial

        from recsys.data.datamodule import Loader
        from recsys.model import RecModel
        from recsys.recommender import embedding_tables
        from recsys.testing.training import fit_tiny

        torch.manual_seed(0)
        data = self.make_data()
        enc = self.make_encoder()
        model = RecModel(enc, self.scorer, self.loss, reg_weight=self.reg_weight, negatives=self.negatives,
                         optimizer=partial(torch.optim.Adam, lr=self.lr, weight_decay=self.weight_decay))
        fit_tiny(model, data, Loader(batch_size=64, num_negatives=self.num_negatives), self.checkerboard_epochs)
        q, i = embedding_tables(enc, model.scorer, data, up_to="train+valid")
        scores = (q @ i.T).numpy()
        assert group_separation(scores, data) >= 0.9


class BaselineConformance:
    """Contract tests for a ``Baseline`` through the ``Recommender`` protocol: known answer, score shape, round trip.

    Subclasses implement :meth:`make_model`; set ``learns_checkerboard = False`` for non-personalised models (they
    still must score every item and survive a ``state_dict`` round trip).
    """

    learns_checkerboard = True

    def make_model(self):
        raise NotImplementedError

    def test_checkerboard_and_round_trip(self, tmp_path):
        data = checkerboard()
        m = self.make_model()
        m.fit(data)
        users = torch.arange(data.n_users)
        scores = m.score_fn(data, "train+valid")(users, None).detach().numpy()
        assert scores.shape == (data.n_users, data.n_items) and np.isfinite(scores).all()
        if self.learns_checkerboard:
            assert group_separation(scores, data) >= 0.9
        path = tmp_path / "m.pt"
        torch.save(m.state_dict(), path)
        m2 = self.make_model()
        m2.load_state_dict(torch.load(path, weights_only=True))
        m2.bind(data)
        again = m2.score_fn(data, "train+valid")(users, None).detach().numpy()
        np.testing.assert_allclose(again, scores, rtol=1e-5, atol=1e-6)
