"""The Python API: datasets from DataFrames, Arrow tables and files; fit -> Run; recommend/evaluate/save/export."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import recsys
from recsys.errors import RecsysError, RunDirError


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 60, 1500)
    items = (users * 7 + rng.integers(0, 12, 1500)) % 40  # each user likes a band of items
    df = pd.DataFrame({"u": [f"user-{u:03d}" for u in users], "i": items.astype(np.int64) * 11,
                       "t": np.arange(1500, dtype=np.int64)})
    return df.drop_duplicates(["u", "i"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def run(log, tmp_path_factory):
    data = recsys.from_dataframe(log, user="u", item="i", timestamp="t", name="bands")
    return recsys.fit(data, config="mf_bpr", run_dir=tmp_path_factory.mktemp("api") / "mf", quiet=True,
                      trainer__max_epochs=2, trainer__enable_progress_bar=False,
                      trainer__enable_model_summary=False, model__init_args__encoder__init_args__dim=16)


def test_fit_returns_the_run_with_its_metrics_and_the_dataset_name(run):
    assert run.status == "finished"
    assert run.config_dict()["data"]["dataset"] == "bands"
    assert run.config_dict()["model"]["init_args"]["encoder"]["init_args"]["dim"] == 16
    assert set(run.metrics("test")) >= {"ndcg@20", "recall@10"}
    assert run.evaluate("test") == run.metrics("test")


def test_recommend_uses_external_ids_and_excludes_what_the_user_had(run, log):
    top = run.recommend(["user-001", "user-002"], k=5)
    assert list(top.columns[:4]) == ["user", "item", "rank", "score"]
    assert set(top["user"]) == {"user-001", "user-002"} and len(top) == 10
    assert top["item"].dtype == np.int64 and set(top["item"]) <= set(log["i"])
    seen = set(map(tuple, log[["u", "i"]].to_numpy()))
    assert not any((u, i) in seen for u, i in zip(top["user"], top["item"]))
    kept = run.recommend(["user-001"], k=40, exclude="none")
    assert any(("user-001", i) in seen for i in kept["item"])
    with pytest.raises(RecsysError, match="not in the run"):
        run.recommend(["nobody"], k=3)


def test_arrow_and_file_sources_give_the_same_dataset(log, tmp_path):
    a = recsys.from_dataframe(log, user="u", item="i", timestamp="t")
    b = recsys.from_arrow(pa.Table.from_pandas(log), user="u", item="i", timestamp="t")
    log.to_parquet(tmp_path / "log.parquet")
    c = recsys.from_file(tmp_path / "log.parquet", user="u", item="i", timestamp="t")
    for other in (b, c):
        pd.testing.assert_frame_equal(a.interactions, other.interactions)
    assert c.name == "log"


def test_save_copies_and_refuses_to_clobber(run, tmp_path):
    copy = run.save(tmp_path / "kept")
    assert copy.metrics("test") == run.metrics("test")
    with pytest.raises(RunDirError, match="exists"):
        run.save(tmp_path / "kept")
    assert recsys.load_run(tmp_path / "kept").recommend(["user-003"], k=3).shape[0] == 3


def test_export_writes_embeddings(run, tmp_path):
    info = run.export(tmp_path / "emb")
    assert info["n_items"] == run.data().n_items and (tmp_path / "emb" / "items.parquet").exists()


def test_bad_config_name_and_bad_data_are_one_line_errors(log):
    with pytest.raises(RecsysError, match="did you mean"):
        recsys.fit(recsys.from_dataframe(log, user="u", item="i"), config="mf_bprr")
    with pytest.raises(TypeError, match="dataset object or a dataset name"):
        recsys.fit(123)
