"""Tests for recsys.datasets: synthetic generator, MovieLens, generic, benchmark text and the registry."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.datasets import (
    RawDataset,
    available_datasets,
    generate_synthetic,
    load_dataset,
    load_generic,
    load_movielens,
)
from recsys.datasets import movielens as ml
from recsys.datasets.benchmark_txt import load_benchmark_txt
from recsys.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared/datasets"
ML_SMALL = SHARED / "ml-latest-small"


# ----------------------------------------------------------------------------------------------------- synthetic
@pytest.fixture(scope="module")
def synth() -> RawDataset:
    return generate_synthetic()


def test_synthetic_sizes_and_schema(synth):
    ic = synth.interactions
    assert len(ic) == 50_000 and synth.n_users == 2000 and synth.n_items <= 1000
    assert list(ic.columns) == ["user", "item", "rating", "timestamp"]
    assert ic["user"].dtype == np.int64 and ic["rating"].dtype == np.float32 and ic["timestamp"].dtype == np.int64
    assert not ic.duplicated(["user", "item"]).any()  # sampled without replacement per user
    assert set(ic["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and ic["rating"].nunique() == 5
    assert list(synth.items.columns) == ["item", "title", "category", "brand", "description", "year", "concepts",
                                         "price"]
    assert len(synth.items) == 1000 and len(synth.users) == 2000
    assert list(synth.users.columns) == ["user", "age_group", "country", "device", "true_concepts"]
    assert synth.meta["user_factors"].shape == (2000, 8) and synth.meta["item_factors"].shape == (1000, 8)
    assert synth.meta["item_concept_matrix"].shape == (1000, 24) and len(synth.meta["concept_names"]) == 24


def test_synthetic_deterministic_and_seed_dependent(synth):
    again = generate_synthetic()
    pd.testing.assert_frame_equal(synth.interactions, again.interactions)
    pd.testing.assert_frame_equal(synth.items, again.items)
    pd.testing.assert_frame_equal(synth.users, again.users)
    np.testing.assert_array_equal(synth.meta["item_factors"], again.meta["item_factors"])
    other = generate_synthetic(n_users=200, n_items=100, n_interactions=3000, seed=1)
    small = generate_synthetic(n_users=200, n_items=100, n_interactions=3000, seed=0)
    assert not other.interactions.equals(small.interactions)


def test_synthetic_fast_enough():
    start = time.perf_counter()
    generate_synthetic(seed=3)
    assert time.perf_counter() - start < 5.0


def test_synthetic_popularity_and_activity_skew(synth):
    pop = synth.interactions["item"].value_counts().to_numpy()
    top_share = pop[: len(pop) // 10].sum() / pop.sum()
    assert top_share > 0.3  # the top 10% of items get far more than 10% of interactions
    flat = generate_synthetic(n_users=500, n_items=400, n_interactions=10_000, popularity_skew=0.0)
    flat_pop = flat.interactions["item"].value_counts().to_numpy()
    assert flat_pop[: len(flat_pop) // 10].sum() / flat_pop.sum() < top_share
    per_user = synth.interactions["user"].value_counts()
    assert per_user.max() > 5 * per_user.median()  # some heavy users


def test_synthetic_concepts_and_text_follow_clusters(synth):
    items, meta = synth.items, synth.meta
    assert all(isinstance(c, list) and 2 <= len(c) <= 4 for c in items["concepts"])
    assert set(np.concatenate(items["concepts"].to_numpy())) <= set(meta["concept_names"])
    # The concept lists agree with the ground-truth matrix.
    names = np.asarray(meta["concept_names"])
    assert sorted(items["concepts"][0]) == sorted(names[meta["item_concept_matrix"][0] > 0])
    assert all(isinstance(c, list) and len(c) == 3 for c in synth.users["true_concepts"])
    # Descriptions use the words of the item's own concepts, so text differs between clusters.
    space = items[items["concepts"].map(lambda c: c[0] == "space")]
    romance = items[items["concepts"].map(lambda c: c[0] == "romance")]
    assert len(space) and len(romance)
    assert space["description"].str.contains("orbit|rocket|galaxy|planet|astronaut").mean() > 0.8
    assert romance["description"].str.contains("orbit|rocket|galaxy|planet|astronaut").mean() < 0.5
    vocab = items.groupby("category")["title"].apply(lambda t: set(" ".join(t).split()[2::3]))
    assert len(vocab) > 1 and not set.intersection(*vocab.tolist())  # category nouns differ
    assert items["year"].dtype == np.int64 and items["price"].dtype == np.float64 and (items["price"] > 0).all()


def test_synthetic_timestamps_carry_sequence_signal(synth):
    ic = synth.interactions
    assert (ic.groupby("user")["timestamp"].diff().dropna() > 0).all()  # strictly increasing within a user
    meta = synth.meta
    # Later items align better with the end-of-period preference than earlier ones (user drift).
    drift = meta["user_factors_end"] - meta["user_factors_start"]
    proj = np.einsum("nf,nf->n", meta["item_factors"][ic["item"].to_numpy()], drift[ic["user"].to_numpy()])
    pos = ic.groupby("user").cumcount() / ic.groupby("user")["item"].transform("size")
    assert np.corrcoef(proj, pos)[0, 1] > 0.2


def test_synthetic_ratings_follow_affinity(synth):
    ic = synth.interactions
    aff = np.einsum("nf,nf->n", synth.meta["user_factors"][ic["user"].to_numpy()],
                    synth.meta["item_factors"][ic["item"].to_numpy()])
    assert np.corrcoef(aff, ic["rating"].to_numpy())[0, 1] > 0.3


def test_synthetic_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n_interactions"):
        generate_synthetic(n_users=10, n_items=10, n_interactions=1000)


# ------------------------------------------------------------------------------------------------------ MovieLens
@pytest.mark.skipif(not ML_SMALL.is_dir(), reason="shared ml-latest-small not present")
@pytest.mark.parametrize("where", [ML_SMALL, SHARED])  # the folder itself or its parent
def test_ml_latest_small_from_shared(where):
    ds = load_movielens("ml-latest-small", path=where, download=False)
    ic = ds.interactions
    assert len(ic) == 100_836 and ic["user"].nunique() == 610 and ic["item"].nunique() == 9724
    assert len(ds.items) == 9742 and ds.users is None
    assert ic["rating"].dtype == np.float32 and ic["timestamp"].dtype == np.int64
    items = ds.items.set_index("item")
    assert items.loc[1, "title"] == "Toy Story" and items.loc[1, "year"] == 1995
    assert items.loc[1, "genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert items.loc[143410, "genres"] == []  # "(no genres listed)"
    assert items["tags"].map(len).gt(0).sum() > 1000
    assert all(t == t.strip().lower() for tags in items["tags"] for t in tags)
    assert all(len(tags) == len(set(tags)) for tags in items["tags"])
    assert ds.meta["checksums_verified"] == ["ratings.csv", "movies.csv", "tags.csv", "links.csv"]
    assert "commercial" in ds.meta["licence"] and "Harper" in ds.meta["citation"]


@pytest.mark.skipif(not ML_SMALL.is_dir(), reason="shared ml-latest-small not present")
def test_registry_loads_ml_latest_small():
    assert load_dataset("ml-latest-small", path=ML_SMALL, with_tags=False).items.columns.tolist() == [
        "item", "title", "year", "genres"]


def test_checksum_mismatch_is_reported(tmp_path):
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    (d / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    with pytest.raises(DataError, match="checksum mismatch") as err:
        load_movielens(path=tmp_path, download=False)
    assert "ratings.csv" in str(err.value) and "verify=False" in str(err.value)
    ds = load_movielens(path=tmp_path, verify=False)
    assert len(ds.interactions) == 1 and "tags" not in ds.items.columns


def _offline(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable")


def test_offline_error_names_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DataError) as err:
        load_movielens("ml-100k", cache_dir=tmp_path)
    assert "path=" in str(err.value) and "--data.path" in str(err.value)
    with pytest.raises(DataError, match="download=False") as err:
        load_movielens("ml-1m", cache_dir=tmp_path, download=False)
    assert "--data.path" in str(err.value)
    assert not list(tmp_path.glob("*.part"))


_U_DATA = "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n"
_U_ITEM = ("10|Alpha Film (1995)|01-Jan-1995||http://example.org/a|0|1|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
           "20|Beta \"Quoted\" Film|01-Jan-1997||http://example.org/b|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n")
_U_USER = "1|24|M|technician|85711\n2|53|F|other|T8H1N\n"


def _write_100k(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "u.data").write_text(_U_DATA)
    (d / "u.item").write_bytes(_U_ITEM.encode("latin-1"))
    (d / "u.user").write_text(_U_USER)


def test_ml_100k_layout(tmp_path):
    _write_100k(tmp_path / "ml-100k")
    ds = load_movielens("ml-100k", path=tmp_path)
    assert ds.interactions["rating"].tolist() == [4.0, 3.0, 5.0]
    items = ds.items.set_index("item")
    assert items.loc[10, "title"] == "Alpha Film" and items.loc[10, "genres"] == ["Action", "Comedy"]
    assert items.loc[20, "year"] == 1997 and items.loc[20, "genres"] == []  # year from the release date
    assert items.loc[20, "title"] == 'Beta "Quoted" Film'
    users = ds.users.set_index("user")
    assert users.loc[2, "zip_prefix"] == "T8H" and users.loc[1, "age"] == 24 and users.loc[1, "gender"] == "M"


def test_ml_1m_layout(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("1::1193::5::978300760\n2::661::3::978302109\n")
    (d / "movies.dat").write_bytes("1193::Caf\xe9 Story (1975)::Drama\n661::Peach (1996)::Animation|Musical\n"
                                   .encode("latin-1"))
    (d / "users.dat").write_text("1::F::1::10::08067\n2::M::56::16::70072\n")
    ds = load_movielens("ml-1m", path=d)
    assert len(ds.interactions) == 2
    items = ds.items.set_index("item")
    assert items.loc[1193, "title"] == "Caf\xe9 Story" and items.loc[661, "genres"] == ["Animation", "Musical"]
    users = ds.users.set_index("user")
    assert users.loc[2, "occupation"] == "self-employed" and users.loc[1, "zip_prefix"] == "080"


def test_download_verifies_archive_and_unpacks(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _write_100k(src / "ml-100k")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in (src / "ml-100k").iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    payload = buf.getvalue()

    class _Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: calls.append(url) or _Response(payload))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch"):  # our fake is not the official archive
        load_movielens("ml-100k", cache_dir=cache)
    fake = dataclasses.replace(ml.MOVIELENS_VARIANTS["ml-100k"], archive_sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(ml.MOVIELENS_VARIANTS, "ml-100k", fake)
    ds = load_movielens("ml-100k", cache_dir=cache)
    assert calls[-1] == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert len(ds.interactions) == 3 and ds.meta["obtained"] == "download"
    assert load_movielens("ml-100k", cache_dir=cache, download=False).meta["obtained"] == "cache"
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------- generic, benchmark
def test_load_generic_with_side_tables(tmp_path):
    (tmp_path / "log.csv").write_text("uid,sku,stars,when,fold\nu1,7,5,2021-05-01,train\nu2,8,2,1600000000,test\n")
    (tmp_path / "items.tsv").write_text("sku\ttitle\ttags\n7\tLamp\tlight;home\n8\tDesk\t\n9\tChair\twood\n")
    (tmp_path / "users.csv").write_text("uid,country\nu1,FR\nu2,DE\n")
    ds = load_generic(tmp_path / "log.csv", user="uid", item="sku", rating="stars", timestamp="when", split="fold",
                      items_path=tmp_path / "items.tsv", multi_valued={"tags": ";"}, users_path=tmp_path / "users.csv")
    assert ds.name == "log" and ds.interactions["split"].tolist() == ["train", "test"]
    assert ds.items["tags"].tolist() == [["light", "home"], [], ["wood"]]
    assert ds.users.columns.tolist() == ["user", "country"]
    same = load_dataset("csv", path=tmp_path / "log.csv", user="uid", item="sku")
    assert same.interactions.columns.tolist() == ["user", "item"]


def test_load_generic_key_dtype_mismatch(tmp_path):
    # A text key for integer item IDs names no item: the row is counted as unknown, not matched and not an error.
    (tmp_path / "log.csv").write_text("user,item\n1,7\n")
    (tmp_path / "items.csv").write_text("item,title\n7,a\nabc,b\n")
    ds = load_generic(tmp_path / "log.csv", items_path=tmp_path / "items.csv")
    assert ds.items["item"].tolist() == [7] and ds.items["item"].dtype == np.int64
    assert ds.meta["item_rows_unknown"] == 1 and ds.meta["items_without_attributes"] == 0


def test_benchmark_txt(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2 3\n1 2\n2\n3 0 4 \n")
    (tmp_path / "test.txt").write_text("0 4\n1 3 5\n")
    ds = load_dataset("benchmark-txt", path=tmp_path)
    ic = ds.interactions
    assert len(ic) == 9 and ic["user"].dtype == np.int64 and ic["item"].dtype == np.int64
    assert ic.groupby("split").size().to_dict() == {"test": 3, "train": 6}
    assert ic[ic["split"] == "train"].query("user == 0")["item"].tolist() == [1, 2, 3]
    assert ds.meta["n_users"] == 4 and ds.meta["n_items"] == 6 and ds.meta["users_without_train_items"] == 1


def test_benchmark_txt_bad_token(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2\n1 2 x7 3\n")
    (tmp_path / "test.txt").write_text("0 3\n")
    with pytest.raises(DataError) as err:
        load_benchmark_txt(tmp_path)
    assert "'x7'" in str(err.value) and str(tmp_path / "train.txt") in str(err.value) and err.value.row == 1


def test_benchmark_txt_missing_test_file(tmp_path):
    (tmp_path / "train.txt").write_text("0 1\n")
    with pytest.raises(DataError, match="file not found") as err:
        load_benchmark_txt(tmp_path)
    assert "test.txt" in str(err.value)


# ------------------------------------------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    names = available_datasets()
    for name in ("synthetic", "ml-latest-small", "ml-100k", "ml-1m", "ml-20m", "ml-25m", "generic", "benchmark-txt"):
        assert name in names
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*ml-1m.*benchmark-txt"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="path"):
        load_dataset("parquet")
    ds = load_dataset("synthetic", n_users=100, n_items=50, n_interactions=1000, seed=2)
    assert ds.name == "synthetic" and len(ds.interactions) == 1000
