"""Feature pipeline: side-table columns to jagged token lists (categorical, multi-valued, numeric buckets, IDs)."""

import numpy as np
import pandas as pd
import pytest

from recsys.data.features import (
    MISSING,
    FeatureSpec,
    as_specs,
    default_features,
    describe,
    encode_features,
    encode_table,
)
from recsys.testing.fixtures import tiny_synthetic


@pytest.fixture(scope="module")
def synthetic():
    return tiny_synthetic()


def hand_table() -> pd.DataFrame:
    return pd.DataFrame({
        "color": ["red", None, "blue", "red", np.nan],
        "tags": [["a", "b", "a"], np.array(["c"]), [], np.nan, ["b", "c", "d", "e"]],
        "piped": ["x|y", "", None, "y", "z| x"],
        "year": pd.array([1990, None, 2000, 2010, 2020], dtype="Int64"),
        "price": [1.0, 2.0, np.nan, 100.0, 5.5],
    })


HAND_SPECS = [
    FeatureSpec("id", "@id"),
    FeatureSpec("color"),
    FeatureSpec("tags", kind="multi", max_values=3),
    FeatureSpec("piped", kind="multi", sep="|"),
    FeatureSpec("year", kind="numeric", boundaries=[1995, 2005, 2015]),
    FeatureSpec("price", kind="numeric", buckets=2),
    FeatureSpec("count", "@count", kind="numeric", buckets=2),
]


def test_hand_made_table_tokens():
    f = encode_table(hand_table(), HAND_SPECS, ids=np.array([10, 11, 12, 13, 14]), counts=[0, 3, 5, 0, 9])
    assert list(f) == [s.name for s in HAND_SPECS]
    assert [f["id"].row_tokens(r) for r in range(5)] == [["10"], ["11"], ["12"], ["13"], ["14"]]
    assert [f["color"].row_tokens(r) for r in range(5)] == [["red"], [MISSING], ["blue"], ["red"], [MISSING]]
    # Duplicates dropped in order, lists / arrays / empty / NaN cells, and the max_values cut.
    assert [f["tags"].row_tokens(r) for r in range(5)] == [["a", "b"], ["c"], [MISSING], [MISSING], ["b", "c", "d"]]
    assert [f["piped"].row_tokens(r) for r in range(5)] == [["x", "y"], [MISSING], [MISSING], ["y"], ["z", "x"]]
    # Explicit edges: (−∞,1995) q0, [1995,2005) q1, [2005,2015) q2, [2015,∞) q3; a missing year is its own token.
    assert [f["year"].row_tokens(r) for r in range(5)] == [["q0"], [MISSING], ["q1"], ["q2"], ["q3"]]
    # Two quantile buckets split at the median of the present values.
    assert [f["price"].row_tokens(r)[0] for r in range(5)] == ["q0", "q0", MISSING, "q1", "q1"]
    assert [f["count"].row_tokens(r)[0] for r in range(5)] == ["q0", "q1", "q1", "q0", "q1"]


def test_jagged_layout_and_padding():
    f = encode_table(hand_table(), HAND_SPECS, ids=np.arange(5), counts=np.zeros(5))["tags"]
    assert f.offsets.tolist() == [0, 2, 3, 4, 5, 8]
    assert f.lengths.tolist() == [2, 1, 1, 1, 3]
    assert not f.single
    assert list(f.vocab) == sorted(f.vocab)
    idx, mask = f.padded()
    assert idx.shape == mask.shape == (5, 3)
    assert mask.sum() == len(f.values)
    assert [str(f.vocab[i]) for i in idx[4][mask[4]]] == ["b", "c", "d"]
    keys = f.keys()
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == len(f.vocab)


def test_integral_floats_and_ints_are_one_token():
    t = pd.DataFrame({"v": [3, 3.0, np.int64(3), "3"]}, dtype=object)
    f = encode_table(t, [FeatureSpec("v")])["v"]
    assert list(f.vocab) == ["3"]


def test_errors():
    with pytest.raises(ValueError, match="kind"):
        FeatureSpec("x", kind="dense")
    with pytest.raises(ValueError, match="lacks"):
        encode_table(hand_table(), [FeatureSpec("nope")])
    with pytest.raises(ValueError, match="unique"):
        as_specs([FeatureSpec("a"), {"name": "a"}])
    with pytest.raises(ValueError, match="no side table"):
        encode_table(None, [FeatureSpec("color")], n_rows=3)


def test_specs_from_dicts():
    specs = as_specs([{"name": "genres", "kind": "multi", "num_chunks": 3}])
    assert specs[0] == FeatureSpec("genres", kind="multi", num_chunks=3)


def test_synthetic_defaults(synthetic):
    items = encode_features(synthetic, "item")
    users = encode_features(synthetic, "user")
    assert list(items) == ["item_id", "concepts", "category", "brand", "year", "price", "popularity"]
    assert list(users) == ["user_id", "age_group", "country", "device", "activity"]  # never the true concepts
    for f in items.values():
        assert f.n_rows == synthetic.n_items
    for f in users.values():
        assert f.n_rows == synthetic.n_users
    assert len(items["item_id"].vocab) == synthetic.n_items
    assert not items["concepts"].single and items["category"].single
    assert 2 <= items["concepts"].lengths.min() and items["concepts"].lengths.max() <= 4
    summary = {d["name"]: d for d in describe(items)}
    assert summary["category"]["vocab"] == 8
    # Popularity buckets follow the train split: the most popular item is in the top bucket.
    pop = synthetic.item_popularity()
    top = items["popularity"].row_tokens(int(pop.argmax()))[0]
    assert top == max(items["popularity"].vocab.tolist(), key=lambda t: int(t[1:]) if t != MISSING else -1)


def test_defaults_without_user_table(synthetic):
    from dataclasses import replace

    data = replace(synthetic, user_table=None, _csr={})
    specs = default_features(data, "user", num_chunks=2)
    assert [(s.name, s.num_chunks) for s in specs] == [("user_id", 2), ("activity", 2)]


def test_parquet_round_trip_gives_the_same_features(synthetic, tmp_path):
    from recsys.data.prepared import PreparedData

    synthetic.save(tmp_path)
    again = PreparedData.load(tmp_path)
    for side in ("user", "item"):
        a, b = encode_features(synthetic, side), encode_features(again, side)
        for name in a:
            assert list(a[name].vocab) == list(b[name].vocab), name
            np.testing.assert_array_equal(a[name].values, b[name].values)
            np.testing.assert_array_equal(a[name].offsets, b[name].offsets)
