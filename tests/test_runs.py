"""The run directory contract: a typed, versioned model payload read once, and configs that cannot run code."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from conftest import fit_args

from recsys.cli import main
from recsys.config import ConfigError
from recsys.errors import CheckpointError
from recsys.runs import PAYLOAD_VERSION, ModelPayload, Run

MINIMAL_CONFIG = "model: null\n"


@pytest.fixture(scope="module")
def ease_run(tmp_path_factory):
    """A closed-form run without serving tables: scoring it rebuilds the model from the validated config."""
    run = tmp_path_factory.mktemp("ease") / "run"
    assert main(fit_args("ease.yaml", run)) == 0
    return run


def _payload() -> ModelPayload:
    g = torch.Generator().manual_seed(0)
    return ModelPayload(state_dict={"w": torch.randn(3, 2, generator=g)},
                        scorer={"metric": "inner_product", "normalize": True, "temperature": 0.1},
                        queries=torch.randn(4, 2, generator=g), items=torch.randn(5, 2, generator=g),
                        concepts=["a", "b"], extras={"index.codes": torch.arange(5)})


def test_payload_round_trip(tmp_path):
    written = _payload()
    Run.create(tmp_path / "r", MINIMAL_CONFIG).save_payload(written)
    raw = torch.load(tmp_path / "r" / Run.MODEL, weights_only=True)  # plain dicts and tensors only
    assert raw["format_version"] == PAYLOAD_VERSION and set(raw["tables"]) == {"queries", "items"}
    read = Run.open(tmp_path / "r").payload
    assert read.version == PAYLOAD_VERSION and read.scorer == written.scorer and read.concepts == ["a", "b"]
    assert read.config_sha256 == Run(tmp_path / "r").config_sha256()
    for name in ("queries", "items"):
        torch.testing.assert_close(getattr(read, name), getattr(written, name))
    torch.testing.assert_close(read.state_dict["w"], written.state_dict["w"])
    torch.testing.assert_close(read.extras["index.codes"], torch.arange(5))


def test_version_1_payload_still_reads(tmp_path):
    run = Run.create(tmp_path / "r", MINIMAL_CONFIG)
    torch.save({"state_dict": {}, "scorer": '{"metric": "inner_product", "normalize": true}',
                "concepts": '["x", "y"]', "tables": {"queries": torch.ones(2, 2), "items": torch.ones(3, 2)}},
               run.path / Run.MODEL)
    p = Run.open(run.path).payload
    assert p.version == 1 and p.scorer["normalize"] is True and p.concepts == ["x", "y"]
    assert p.config_sha256 is None and p.tables[1].shape == (3, 2)


def test_unknown_newer_payload_version_is_refused(mf_run, tmp_path, capsys):
    bad = tmp_path / "new"
    shutil.copytree(mf_run, bad)
    raw = torch.load(bad / Run.MODEL, weights_only=True)
    raw["format_version"] = PAYLOAD_VERSION + 1
    torch.save(raw, bad / Run.MODEL)
    with pytest.raises(CheckpointError, match=f"payload format version {PAYLOAD_VERSION + 1}, newer"):
        _ = Run.open(bad).payload
    assert main(["score", "--run-dir", str(bad), "--out", str(tmp_path / "x.parquet")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsys score: error:") and "newer than this recsys reads" in err and "\n" not in err


def _tamper(src, dst, marker, where: str) -> None:
    """Copy a run and make its config name ``subprocess.run`` (which would create ``marker``) at ``where``."""
    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / Run.CONFIG).read_text())
    bad = {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}
    if where == "model":
        cfg["model"] = bad
    else:
        cfg["model"]["init_args"][where] = bad
    (dst / Run.CONFIG).write_text(yaml.safe_dump(cfg))


COMMANDS = {"evaluate": lambda run, out: ["evaluate", "--run-dir", str(run)],
            "score": lambda run, out: ["score", "--run-dir", str(run), "--out", str(out / "s.parquet")],
            "export": lambda run, out: ["export", "--run-dir", str(run), "--out", str(out / "e")]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_edited_config_is_refused_and_runs_nothing(command, mf_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    _tamper(mf_run, run, marker, "encoder")
    capsys.readouterr()
    assert main(COMMANDS[command](run, tmp_path)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"recsys {command}: error: ") and "\n" not in err, err
    assert "config.yaml" in err and "changed after fit" in err
    assert not marker.exists()


@pytest.mark.parametrize("where", ["model", "encoder", "scorer"])
def test_a_foreign_class_is_refused_even_with_a_matching_hash(where, mf_run, tmp_path, capsys):
    """Whoever can rewrite model.pt too still only gets the declared types instantiated."""
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    _tamper(mf_run, run, marker, where)
    with pytest.raises(ConfigError, match="changed after fit"):
        _ = Run.open(run).payload
    raw = torch.load(run / Run.MODEL, weights_only=True)
    raw["config_sha256"] = Run(run).config_sha256()
    torch.save(raw, run / Run.MODEL)
    with pytest.raises(ConfigError, match="subprocess.run"):
        Run.open(run).recommender()
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsys evaluate: error: ") and "\n" not in err and "subprocess.run" in err, err
    assert not marker.exists()


def test_payload_is_read_once_per_run(ease_run, tmp_path, monkeypatch):
    """Scoring a model without tables rebuilds it from the validated config: one read of model.pt for both."""
    from recsys.scoring.batch import score_run

    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    assert Run.open(ease_run).payload.tables is None
    calls.clear()
    assert score_run(ease_run, tmp_path / "s.parquet", k=3) > 0
    assert [str(c).endswith(Run.MODEL) for c in calls] == [True]


def test_status_and_results(ease_run, tmp_path):
    assert Run.open(ease_run).status == "finished"
    assert Run.create(tmp_path / "new", MINIMAL_CONFIG).status == "configured"
    m = Run.open(ease_run).metrics()
    assert set(m) >= {"ndcg@20", "recall@20"} and Run.open(ease_run).metrics("valid").keys() == m.keys()


def test_closed_form_and_trained_models_load_through_one_path(ease_run, mf_run):
    """Both kinds come back as Recommenders with the metrics fit wrote (the same seed, the same numbers)."""
    from recsys.metrics.evaluate import evaluate
    from recsys.recommender import Recommender

    for path in (ease_run, mf_run):
        run = Run.open(path)
        model = run.recommender()
        assert isinstance(model, Recommender)
        assert evaluate(model, run.data(), "test")["ndcg@20"] == pytest.approx(run.metrics()["ndcg@20"], abs=1e-6)


def test_new_items_read_the_payload_once(tmp_path, monkeypatch):
    """``--new-items`` rebuilds the text encoder and scores the stored tables: one read of model.pt for both."""
    import numpy as np
    import pandas as pd
    from test_text import make_tiny_bert

    from recsys.scoring.batch import score_run

    lm = make_tiny_bert(tmp_path / "lm")
    run = tmp_path / "run"
    assert main(fit_args("linear_probe.yaml", run, "--model.init_args.encoder.init_args.lm_path", str(lm),
                         "--model.init_args.encoder.init_args.cache_dir", str(tmp_path / "cache"), epochs=1)) == 0
    trained = Run.open(run).data().item_table
    new = trained.head(1).copy()
    new["item"] = ["new-0"] if trained["item"].dtype == object else [10**9]
    for col in new.columns:
        if col != "item" and isinstance(new[col].iloc[0], (list, np.ndarray)):
            new[col] = ["|".join(map(str, v)) for v in new[col]]
    new.to_csv(tmp_path / "new.csv", index=False)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(str(a[0])) or real(*a, **kw))
    assert score_run(run, tmp_path / "s.parquet", k=3, new_items=tmp_path / "new.csv") > 0
    assert [c for c in calls if c.endswith(Run.MODEL)] == [str(run / Run.MODEL)]
    assert set(pd.read_parquet(tmp_path / "s.parquet")["item"].astype(str)) <= {*map(str, trained["item"]), "new-0",
                                                                                  str(10**9)}


def test_an_encoder_and_scorer_serve_as_a_recommender():
    """EmbeddingRecommender: fit binds a (pretrained or re-bound) encoder; tables and scores come from it."""
    from recsys.encoders import MatrixFactorization
    from recsys.metrics.evaluate import evaluate
    from recsys.recommender import EmbeddingRecommender, Recommender
    from recsys.scorers import CosineScorer
    from recsys.testing import checkerboard

    data = checkerboard()
    model = EmbeddingRecommender(MatrixFactorization(dim=4), CosineScorer(0.5))
    model.fit(data)
    assert isinstance(model, Recommender) and model.scorer_description()["normalize"] is True
    queries, items = model.serving_tables(data)
    scores = model.score_fn(data)(torch.arange(3), None)
    torch.testing.assert_close(scores, queries[:3] @ items.T)
    assert set(model.state_dict()) == {"encoder.user.table.weight", "encoder.item.table.weight"}
    assert 0.0 <= evaluate(model, data, "test")["ndcg@20"] <= 1.0
    with pytest.raises(ValueError, match="cannot embed items outside its catalogue"):
        model.new_item_table(None)
