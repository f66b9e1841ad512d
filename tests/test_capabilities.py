"""Every wrapper around every encoder family keeps each declared capability of the wrapped encoder, and it works.

A wrapper that cannot honour a capability refuses the encoder at construction; it never drops one silently.
"""

import pytest
import torch
import yaml
from conftest import REPO, fit_args, write_new_items
from test_text import make_tiny_bert

from recsys.capabilities import (
    CAPABILITIES,
    EmbedsNewItems,
    EncodesPositions,
    EpochAware,
    ExplicitConcepts,
    ScoresAgainstTable,
    Transfers,
    UsesGallery,
    capabilities_of,
)
from recsys.cli import main
from recsys.data.batch import Batch
from recsys.data.concepts import Concepts
from recsys.encoders import (
    NGCF,
    AlphaRec,
    Backbone,
    BasisTransformation,
    BinaryCodes,
    Compatible,
    DenseSparseTable,
    LatentQuantization,
    LightGCN,
    LinearProbe,
    LowRank,
    MatrixFactorization,
    Matryoshka,
    PrincipalAxes,
    ProductQuantization,
    Recformer,
    SASRec,
    StationarySimplex,
)
from recsys.encoders.language import TextFeatures
from recsys.encoders.sesa import SESA
from recsys.scorers import DotScorer
from recsys.testing import checkerboard
from recsys.text.recformer_tokens import TokenOptions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps_lm")
    return str(make_tiny_bert(root / "model")), str(root / "cache")


def _families(lm):
    text = {"lm_path": lm[0], "cache_dir": lm[1]}
    return {
        "mf": lambda: MatrixFactorization(dim=8),
        "lightgcn": lambda: LightGCN(dim=8, n_layers=2),
        "ngcf": lambda: NGCF(dim=4, n_layers=1, node_dropout=0.0, message_dropout=0.0),
        "sasrec": lambda: SASRec(dim=8, num_layers=1, num_heads=2, max_len=5, dropout=0.0),
        "alpharec": lambda: AlphaRec(dim=8, hidden_dim=16, **text),
        "linear_probe": lambda: LinearProbe(dim=8, **text),
        "sesa": lambda: SESA(Concepts(columns=["genres"], min_items=1), TextFeatures(**text)),
        "recformer": lambda: Recformer(None, Backbone(hidden_size=16, num_layers=1, num_heads=2,
                                                      intermediate_size=32, attention_window=8),
                                       TokenOptions(max_items=4, max_token_num=48, max_attr_length=8)),
    }


WRAPPERS = {
    "matryoshka": lambda e: Matryoshka(e, dim=max(1, e.out_dim // 2)),
    "lowrank": lambda e: LowRank(e, dim=8),
    "binary": lambda e: BinaryCodes(e),
    "quantized": lambda e: LatentQuantization(e, levels=4),
    "compatible": lambda e: Compatible(e),
    "matryoshka(binary)": lambda e: Matryoshka(BinaryCodes(e), dim=max(1, e.out_dim // 2)),
    "dense_sparse": lambda e: DenseSparseTable(e, dim=8, nonzeros=2),
    "product_quantization": lambda e: ProductQuantization(e, subspaces=2, codewords=4),
    "residual_quantization": lambda e: ProductQuantization(e, subspaces=2, codewords=4, kind="residual"),
    "simplex": lambda e: StationarySimplex(e),
    "basis_transformation": lambda e: BasisTransformation(e, old_dim=4),
    "principal_axes": lambda e: PrincipalAxes(e),
}


def _exercise(enc, cap, data) -> None:
    """Call one capability of a bound encoder and check what it returns."""
    users = torch.arange(4)
    items = torch.randint(0, data.n_items, (4, 3))
    hist = torch.from_numpy(data.history(users.numpy(), "train", max(enc.history_len, 1)))
    batch = Batch(users, items, hist)
    if cap is ScoresAgainstTable:
        out = enc.training_tables(batch)
        assert out.query.shape == (4, enc.out_dim) and out.candidates.shape == (data.n_items, enc.out_dim)
    elif cap is EncodesPositions:
        assert enc.encode_query_positions(batch).shape == (4, hist.shape[1], enc.out_dim)
    elif cap is EpochAware:
        enc.on_train_epoch_start(0)
    elif cap is EmbedsNewItems:
        enc.eval()
        new = enc.embed_new_items(data.item_table.iloc[:2])
        assert new.shape == (2, enc.out_dim) and torch.isfinite(new).all()
    elif cap is ExplicitConcepts:
        names = enc.concept_names()
        assert len(names) == enc.out_dim and all(isinstance(n, str) for n in names)
    elif cap is UsesGallery:
        assert enc.gallery_run() is None
    elif cap is Transfers:
        state = enc.state_dict()
        assert all(k in state for k in enc.catalogue_state()), (list(enc.catalogue_state()), list(state)[:5])


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("family", ["mf", "lightgcn", "ngcf", "sasrec", "alpharec", "linear_probe", "sesa",
                                    "recformer"])
def test_wrapper_keeps_every_capability(family, wrapper, tiny_lm):
    torch.manual_seed(0)
    inner = _families(tiny_lm)[family]()
    have = set(capabilities_of(inner))
    try:
        enc = WRAPPERS[wrapper](inner)
    except ValueError as e:
        # Refused at construction, naming a capability the wrapped encoder has.
        assert "cannot wrap" in str(e) and any(c.__name__ in str(e) for c in have)
        return
    assert have <= set(capabilities_of(enc)), f"{wrapper} dropped {have - set(capabilities_of(enc))}"
    assert type(enc).__name__ == type(WRAPPERS[wrapper](MatrixFactorization(dim=8))).__name__
    data = checkerboard()
    enc.bind(data)
    for cap in capabilities_of(enc):
        _exercise(enc, cap, data)


def test_capabilities_are_nominal_and_complete():
    """Every capability has a delegate, and a wrapper claims exactly what it wraps plus its own."""
    from recsys.capabilities import FoldsIn
    from recsys.encoders.wrapper import DELEGATES

    assert set(DELEGATES) == set(CAPABILITIES)
    assert capabilities_of(MatrixFactorization(dim=8)) == (FoldsIn,)
    assert capabilities_of(Matryoshka(MatrixFactorization(dim=8))) == (FoldsIn,)
    assert capabilities_of(Compatible(MatrixFactorization(dim=8))) == (UsesGallery, FoldsIn)
    assert FoldsIn not in capabilities_of(Matryoshka(LightGCN(dim=8)))  # graph models cannot fold in


def test_matryoshka_prefix_of_concepts_and_new_items_follow_the_prefix(tiny_lm):
    data = checkerboard()
    sesa = SESA(Concepts(columns=["genres"], min_items=1), TextFeatures(lm_path=tiny_lm[0], cache_dir=tiny_lm[1]))
    enc = Matryoshka(sesa, dim=None)
    enc.bind(data)
    enc.set_dim(2)
    assert enc.concept_names() == sesa.concept_names()[:2]
    probe = Matryoshka(LinearProbe(dim=8, lm_path=tiny_lm[0], cache_dir=tiny_lm[1]), dim=3)
    probe.bind(data)
    table = data.item_table.iloc[:2]
    torch.testing.assert_close(probe.embed_new_items(table), probe.encoder.embed_new_items(table)[:, :3])


def test_table_scoring_survives_wrapping():
    """Matryoshka(LightGCN) scores many sampled negatives against the item table, as LightGCN does."""
    from recsys.training import SampledNegatives

    torch.manual_seed(0)
    data = checkerboard()
    enc = Matryoshka(LightGCN(dim=8, n_layers=2), dim=4)
    enc.bind(data)
    batch = Batch(torch.arange(6), torch.randint(0, data.n_items, (6, 9)))
    step = SampledNegatives().embed(enc, batch)
    assert step.target is not None and step.out.candidates.shape == (data.n_items, 4)
    out = enc(batch)
    pos, neg = SampledNegatives().score(DotScorer(), batch, step)
    ref = (out.candidates @ out.query.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(torch.cat([pos[:, None], neg], 1), ref)


# End to end through the CLI: --new-items on Matryoshka(AlphaRec), --explain on Matryoshka(SESA).
def _wrapped_config(tmp_path, name: str, dim: int) -> str:
    cfg = yaml.safe_load((REPO / "configs" / name).read_text())
    inner = cfg["model"]["init_args"]["encoder"]
    cfg["model"]["init_args"]["encoder"] = {"class_path": "recsys.encoders.Matryoshka",
                                            "init_args": {"encoder": inner, "dim": dim}}
    path = tmp_path / f"matryoshka_{name}"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_new_items_through_matryoshka_alpharec(tiny_lm, tmp_path):
    import pandas as pd

    cfg = _wrapped_config(tmp_path, "alpharec.yaml", 4)
    run = tmp_path / "run"
    args = fit_args("alpharec.yaml", run, "--model.init_args.encoder.init_args.encoder.init_args.lm_path", tiny_lm[0],
                    "--model.init_args.encoder.init_args.encoder.init_args.cache_dir", tiny_lm[1],
                    "--data.loader.batch_size", "512", "--data.loader.num_negatives", "16", epochs=1)
    args[args.index("--config") + 1] = cfg
    assert main(args) == 0
    trained = pd.read_parquet(run / "data" / "items.parquet")
    new = write_new_items(run, tmp_path / "new.csv")
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(run), "--out", str(out), "--k", str(len(trained) + 2), "--keep-seen",
                 "--new-items", str(tmp_path / "new.csv")]) == 0
    top = pd.read_parquet(out)
    assert {str(v) for v in new["item"]} <= set(map(str, top["item"]))


def test_explain_through_matryoshka_sesa(tiny_lm, tmp_path):
    import pyarrow.parquet as pq

    cfg = _wrapped_config(tmp_path, "sesa.yaml", 3)
    run = tmp_path / "run"
    pre = "--model.init_args.encoder.init_args.encoder.init_args.text.init_args."
    args = fit_args("sesa.yaml", run, pre + "lm_path", tiny_lm[0], pre + "cache_dir", tiny_lm[1],
                    pre + "lm_dim", "16", epochs=1)
    args[args.index("--config") + 1] = cfg
    assert main(args) == 0
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(run), "--out", str(out), "--k", "5", "--explain"]) == 0
    t = pq.read_table(out).to_pandas()
    assert "explanation" in t.columns and len(t) > 0


def test_wrappers_with_delegates_pickle():
    """The classes with delegates are made at run time; pickling rebuilds them from (declared class, capabilities)."""
    import pickle

    torch.manual_seed(0)
    data = checkerboard()
    enc = Matryoshka(LightGCN(dim=8, n_layers=2), dim=4)
    enc.bind(data)
    back = pickle.loads(pickle.dumps(enc))
    assert type(back).__name__ == "Matryoshka" and capabilities_of(back) == (ScoresAgainstTable,)
    torch.testing.assert_close(back.item_table(), enc.item_table())
