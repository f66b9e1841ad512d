"""The factorization grid: every module around MF, LightGCN and AlphaRec passes the encoder contract, and every
module is servable through ``recsys fit`` then ``recsys score --index SPEC``.

Conformance: most (module, inner) pairs have their class in the module's own test file; :data:`COVERED` names them
and :data:`MISSING` generates the rest here, one ``EncoderConformance`` class per pair (AlphaRec with the tiny
random LM of ``tests/test_alpharec.py``). ``test_the_grid_is_complete`` keeps the two tables honest.

Serving: one tiny CLI fit per module (the session's ``mf_run`` where a module is built from a finished run), then
``recsys score --index`` with the module's natural index; the Parquet output must hold ``k`` rows per user, best
first, and no item the user is known to have had (the default ``--exclude all``).
"""

from __future__ import annotations

import importlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import fit_args

from recsys.cli import main
from recsys.encoders import (
    AlphaRec,
    BasisTransformation,
    BinaryCodes,
    Compatible,
    DenseSparseTable,
    LatentQuantization,
    LightGCN,
    LowRank,
    MatrixFactorization,
    Matryoshka,
    PrincipalAxes,
    ProductQuantization,
    StationarySimplex,
)
from recsys.losses import SoftmaxLoss
from recsys.runs import Run
from recsys.scorers import CosineScorer
from recsys.testing import EncoderConformance, checkerboard
from tests.test_alpharec import _TinyLM, tiny_lm  # noqa: F401  (tiny_lm: the module-scoped LM fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

INNERS = ("MF", "LightGCN", "AlphaRec")


def _old_gallery(dim: int = 8) -> torch.Tensor:
    """An old model's item table on the conformance data (what `recsys fit` hands a Compatible encoder)."""
    old = MatrixFactorization(dim=dim)
    old.bind(checkerboard())
    return old.item_table().detach()


def _compatible(inner):
    enc = Compatible(inner)
    enc.set_gallery(_old_gallery(inner.out_dim))
    return enc


def _basis(inner):
    enc = BasisTransformation(inner, old_dim=6)
    enc.set_map(torch.randn(6, inner.out_dim, generator=torch.Generator().manual_seed(0)))
    return enc


#: module -> wrap(inner encoder of width 8 or 16) -> the module's encoder.
MODULES = {
    "Matryoshka": lambda e: Matryoshka(e, dim=e.out_dim // 2),
    "PrincipalAxes": lambda e: Matryoshka(PrincipalAxes(e), dim=e.out_dim // 2),
    "LowRank": lambda e: LowRank(e, dim=16),
    "Maestro": lambda e: LowRank(e, dim=16, group_lasso=1e-3),
    "Binary": lambda e: BinaryCodes(e),
    "BinaryBits": lambda e: BinaryCodes(e, bits=24),
    "Quantized": lambda e: LatentQuantization(e, levels=8, sides="both"),
    "ProductQuantization": lambda e: ProductQuantization(e, subspaces=4, codewords=16),
    "ResidualQuantization": lambda e: ProductQuantization(e, subspaces=3, codewords=8, kind="residual"),
    "DenseSparse": lambda e: DenseSparseTable(e, dim=8, nonzeros=4),
    "Simplex": lambda e: StationarySimplex(e),
    "Compatible": _compatible,
    "BasisTransformation": _basis,
}

#: (module, inner) -> the test class of the module's own file that already runs the contract there.
COVERED = {
    ("Matryoshka", "MF"): "test_factorization::TestMatryoshkaMF",
    ("Matryoshka", "LightGCN"): "test_factorization::TestMatryoshkaLightGCN",
    ("LowRank", "MF"): "test_factorization::TestLowRankMF",
    ("LowRank", "LightGCN"): "test_factorization::TestLowRankLightGCN",
    ("Maestro", "MF"): "test_maestro::TestMaestroMF",
    ("Maestro", "LightGCN"): "test_maestro::TestMaestroLightGCN",
    ("Binary", "MF"): "test_factorization::TestBinaryMF",
    ("Binary", "LightGCN"): "test_factorization::TestBinaryLightGCN",
    ("BinaryBits", "MF"): "test_binary_bits::TestBinaryBitsMF",
    ("BinaryBits", "LightGCN"): "test_binary_bits::TestBinaryBitsLightGCN",
    ("Quantized", "MF"): "test_factorization::TestQuantizedMF",
    ("Quantized", "LightGCN"): "test_factorization::TestQuantizedLightGCN",
    ("ProductQuantization", "MF"): "test_product_quantization::TestProductQuantizationMF",
    ("ProductQuantization", "LightGCN"): "test_product_quantization::TestProductQuantizationLightGCN",
    ("ProductQuantization", "AlphaRec"): "test_product_quantization::TestProductQuantizationAlphaRec",
    ("ResidualQuantization", "MF"): "test_product_quantization::TestResidualQuantizationMF",
    ("DenseSparse", "MF"): "test_dsformer::TestDenseSparseMF",
    ("DenseSparse", "LightGCN"): "test_dsformer::TestDenseSparseLightGCN",
    ("Simplex", "MF"): "test_simplex::TestSimplexMF",
    ("Simplex", "LightGCN"): "test_simplex::TestSimplexLightGCN",
    ("Compatible", "MF"): "test_factorization::TestCompatibleMF",
    ("Compatible", "LightGCN"): "test_factorization::TestCompatibleLightGCN",
    ("BasisTransformation", "MF"): "test_bt2::TestBasisTransformationMF",
    ("BasisTransformation", "LightGCN"): "test_bt2::TestBasisTransformationLightGCN",
}

MISSING = [(m, i) for m in MODULES for i in INNERS if (m, i) not in COVERED]


class _Inner:
    """The class's ``module`` around one inner encoder (MF and LightGCN: the contract's default dot scorer and BPR)."""

    def make_inner(self):
        raise NotImplementedError

    def make_encoder(self):
        return MODULES[self.module](self.make_inner())


class _MF(_Inner):
    def make_inner(self):
        return MatrixFactorization(dim=16)


class _LightGCN(_Inner):
    def make_inner(self):
        return LightGCN(dim=16, n_layers=2)


class _AlphaRec(_TinyLM, _Inner):
    """AlphaRec over the tiny random BERT (cosine scorer, softmax loss, as ``tests/test_alpharec.py``)."""

    # Fresh per test: a shared scorer or loss module is left in eval mode by the previous class's fit.
    scorer = property(lambda self: CosineScorer(0.15))
    loss = property(lambda self: SoftmaxLoss())

    def make_inner(self):
        return AlphaRec(dim=16, mapping="mlp", hidden_dim=16, lm_path=self.lm_path, cache_dir=self.cache_dir)


_BASES = {"MF": _MF, "LightGCN": _LightGCN, "AlphaRec": _AlphaRec}

for _module, _inner in MISSING:
    _name = f"Test{_module}{_inner}"
    globals()[_name] = type(_name, (_BASES[_inner], EncoderConformance), {"module": _module, "__module__": __name__})


def test_the_grid_is_complete():
    """Every (module, inner) pair runs the contract: in its module's file (the class exists) or here."""
    assert {(m, i) for m in MODULES for i in INNERS} == set(COVERED) | set(MISSING)
    for where in COVERED.values():
        file, cls = where.split("::")
        assert issubclass(getattr(importlib.import_module(f"tests.{file}"), cls), EncoderConformance), where
    for m, i in MISSING:
        assert issubclass(globals()[f"Test{m}{i}"], EncoderConformance)


@pytest.mark.parametrize("module", list(MODULES))
def test_around_a_transferable_encoder_only_catalogue_state_depends_on_the_catalogue(module, request):
    """``recsys fit --transfer-from`` loads every state entry outside ``catalogue_state()`` from the source run, so a
    module around AlphaRec must size all of them independently of the catalogue (regression: StationarySimplex's
    per-item ``assignment`` was not declared, and transfer failed on a catalogue of another size)."""
    from recsys.capabilities import Transfers

    wrap = (lambda e: Compatible(e)) if module == "Compatible" else MODULES[module]  # a gallery fixes the catalogue
    lm_path, cache_dir = request.getfixturevalue("tiny_lm")
    shapes = []
    for n_items in (30, 40):
        enc = wrap(AlphaRec(dim=16, mapping="mlp", hidden_dim=16, lm_path=lm_path, cache_dir=cache_dir))
        assert isinstance(enc, Transfers)
        enc.bind(checkerboard(n_users=50, n_items=n_items))
        rebuilt = set(enc.catalogue_state())
        assert rebuilt <= set(enc.state_dict())
        shapes.append({k: tuple(v.shape) for k, v in enc.state_dict().items() if k not in rebuilt})
    assert shapes[0] == shapes[1]


# ---------------------------------------------------------------------------------------------------- serving
#: module -> an index over the tables the module stores that must score exactly like its served float tables.
LOSSLESS = {
    "Matryoshka": "prefix:dim=8",  # the served prefix is 8 wide
    "LowRank": "lowrank",
    "Maestro": "lowrank",
    "Binary": "hamming:shortlist=1000",
    "BinaryBits": "hamming:shortlist=1000",
    "Quantized": "quantized",
    "ProductQuantization": "pq:stored=true",
    "ResidualQuantization": "rq:stored=true",
}


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("module", list(LOSSLESS))
def test_stored_index_tables_score_like_the_served_tables(module, inner, request):
    """What ``recsys fit`` stores for the module's index (factors, codes, codebooks) describes the served tables,
    around every inner encoder and scorer (AlphaRec: cosine, so the dequantized items are re-normalised)."""
    from recsys.recommender import embedding_tables, table_score_fn
    from recsys.scorers import DotScorer
    from recsys.scoring.index import parse_index_spec

    torch.manual_seed(0)
    base = _BASES[inner]()
    if inner == "AlphaRec":
        base.lm_path, base.cache_dir = request.getfixturevalue("tiny_lm")
    base.module = module
    enc = base.make_encoder()
    data = checkerboard()
    enc.bind(data)
    scorer = CosineScorer(0.15) if inner == "AlphaRec" else DotScorer()
    queries, items = embedding_tables(enc, scorer, data, "train")
    extras = enc.serving_extras(lambda e: embedding_tables(e, DotScorer(), data, "train"))
    assert extras or module.startswith("Binary") or module == "Matryoshka", module
    rows = torch.arange(data.n_users)
    exact = queries @ items.T
    fn = table_score_fn(queries, items, normalize=inner == "AlphaRec", index=parse_index_spec(LOSSLESS[module]),
                        extras=extras)
    got = fn(rows, None)
    if module in ("LowRank", "Maestro") and inner == "AlphaRec":
        # The low-rank index re-normalises both sides to the cosine of the (truncated) embeddings, as a prefix
        # does: the scorer's 1/τ is a per-query scale it leaves out, which no ranking sees.
        scale = (got * exact).sum(1, keepdim=True) / (got * got).sum(1, keepdim=True)
        assert (scale > 0).all()
        torch.testing.assert_close(scale, torch.full_like(scale, 1 / 0.15), atol=1e-3, rtol=1e-3)
        got = got * scale
    torch.testing.assert_close(got, exact, atol=1e-4, rtol=1e-4)


ENC = "--model.init_args.encoder.init_args."
INNER = ENC + "encoder.init_args."
SMALL = (INNER + "dim", "16")

#: module -> (config, extra fit arguments, the index specs that serve it). "OLD" is the session's MF run.
SERVED = {
    # Matryoshka(PrincipalAxes(MF)): the MF is one level deeper.
    "Matryoshka": ("mf_matryoshka.yaml", (INNER + "encoder.init_args.dim", "16"),
                   ["prefix:dim=8", "prefix:dim=16,coarse=4,shortlist=12"]),
    "LowRank": ("mf_lowrank.yaml", (*SMALL, ENC + "dim", "32", ENC + "group_lasso", "0.001"),
                ["lowrank", "lowrank:rank=1"]),
    "BinaryCodes": ("mf_binary.yaml", (*SMALL, ENC + "bits", "32"),
                    ["hamming:shortlist=12", "hamming:codes_only=true"]),
    "LatentQuantization": ("mf_quantized.yaml", SMALL, ["quantized"]),
    "ProductQuantization": ("mf_pq.yaml", (*SMALL, ENC + "subspaces", "4", ENC + "codewords", "16"),
                            ["pq:stored=true", "pq:M=4,K=16,rerank=12", "rq:M=2,K=16"]),
    "DenseSparse": ("mf_dsformer.yaml", (*SMALL, ENC + "dim", "32", ENC + "nonzeros", "4"), ["exact"]),
    "StationarySimplex": ("mf_simplex.yaml", SMALL, ["exact"]),
    "Compatible": ("mf_compatible.yaml", (ENC + "old_run", "OLD"), ["exact"]),
    "BasisTransformation": (None, (), ["exact"]),
}

#: list length; the shortlists above (12) barely exceed it, so excluded items must be masked before shortlisting
#: for every user to keep k of them.
K = 10


@pytest.fixture(scope="module")
def served_runs(mf_run, tmp_path_factory):
    """One tiny fitted run per module, made on first use."""
    runs = {}

    def get(module: str):
        if module not in runs:
            config, extra, _ = SERVED[module]
            run = tmp_path_factory.mktemp(module.lower()) / "run"
            if config is None:  # BT² post hoc: the session MF run mapped onto itself, no fit
                from recsys.upgrades import fit_basis_run

                fit_basis_run(mf_run, mf_run, run, steps=50)
            else:
                extra = [str(mf_run) if a == "OLD" else a for a in extra]
                assert main(fit_args(config, run, *extra, epochs=2)) == 0
            runs[module] = run
        return runs[module]

    return get


@pytest.mark.parametrize("module", list(SERVED))
def test_module_is_servable_through_score_index(served_runs, tmp_path, capsys, module):
    run = served_runs(module)
    r = Run.open(run)
    data = r.data()
    known = set(zip(data.users.tolist(), data.items.tolist()))
    for spec in SERVED[module][2]:
        out = tmp_path / "top.parquet"
        assert main(["score", "--run-dir", str(run), "--out", str(out), "--k", str(K), "--index", spec]) == 0, spec
        assert "0 already-consumed items in the output" in capsys.readouterr().out, spec
        top = pq.read_table(out).to_pandas()
        users, items = data.user_vocab.encode(top.user.to_numpy()), data.item_vocab.encode(top.item.to_numpy())
        counts = top.groupby("user").size()
        # Every user gets k items (each has more than k unseen ones of the 80), none of them already consumed.
        assert len(counts) == data.n_users and (counts == K).all(), (spec, counts.describe())
        assert not set(zip(users.tolist(), items.tolist())) & known, spec
        scores = top.sort_values(["user", "rank"]).score.to_numpy().reshape(-1, K)
        assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 1e-6).all(), spec
        assert not top.duplicated(["user", "item"]).any(), spec
