"""Tests for recsys.data.io: readers and the precision of their validation errors."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from recsys.data.io import read_interactions, read_side_table, read_table
from recsys.errors import DataError


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def _assert_where(err: pytest.ExceptionInfo, file, column: str | None, row: int | None) -> None:
    """The message names the file, the column (as given in the source) and the 0-based data row."""
    msg = str(err.value)
    assert str(file) in msg
    assert err.value.file == str(file)
    if column is not None:
        assert f"column {column!r}" in msg and err.value.column == column
    if row is not None:
        assert f"row {row}" in msg and err.value.row == row


def test_read_interactions_canonical_columns_and_dtypes(tmp_path):
    f = _write(tmp_path / "log.csv", "uid,iid,stars,when\n1,10,4.5,100\n2,11,3,200\n2,10,5,300\n")
    df = read_interactions(f, user="uid", item="iid", rating="stars", timestamp="when")
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert df["user"].dtype == np.int64 and df["item"].dtype == np.int64
    assert df["rating"].dtype == np.float32 and df["timestamp"].dtype == np.int64
    assert df["rating"].tolist() == [4.5, 3.0, 5.0]


def test_string_ids_keep_text_and_na_is_not_missing(tmp_path):
    # "NA" is a legitimate ID; only empty fields count as missing.
    f = _write(tmp_path / "log.tsv", "user\titem\nNA\tx\nbob\ty\n")
    df = read_interactions(f)
    assert df["user"].tolist() == ["NA", "bob"]
    assert pd.api.types.is_string_dtype(df["item"])


def test_iso_timestamps_and_mixed_seconds(tmp_path):
    f = _write(tmp_path / "log.csv", "user,item,ts\n1,1,2020-01-01T00:00:00Z\n1,2,1577836801\n2,1,2020-01-01\n")
    df = read_interactions(f, timestamp="ts")
    assert df["timestamp"].tolist() == [1577836800, 1577836801, 1577836800]


def test_dataframe_source_and_datetime_column():
    src = pd.DataFrame({"u": ["a", "b"], "i": [1, 2], "t": pd.to_datetime(["1970-01-02", "1970-01-03"])})
    df = read_interactions(src, user="u", item="i", timestamp="t")
    assert df["timestamp"].tolist() == [86400, 172800]
    with pytest.raises(DataError, match=re.escape("(file mine, column 'x'")):
        read_interactions(src, user="x", item="i", name="mine")


def test_parquet_round_trip(tmp_path):
    f = tmp_path / "log.parquet"
    pd.DataFrame({"user": [1, 2], "item": ["a", "b"], "rating": [1, 5]}).to_parquet(f)
    df = read_interactions(f, rating="rating")
    assert df["item"].tolist() == ["a", "b"] and df["rating"].dtype == np.float32


def test_missing_column_names_file_column_and_available(tmp_path):
    f = _write(tmp_path / "log.csv", "userId,movieId\n1,2\n")
    with pytest.raises(DataError) as err:
        read_interactions(f, user="userId", item="itemId")
    _assert_where(err, f, "itemId", None)
    assert "available columns" in str(err.value) and "'movieId'" in str(err.value)


def test_non_numeric_rating_names_file_column_row_and_value(tmp_path):
    f = _write(tmp_path / "log.csv", "u,i,score\n1,1,4\n1,2,3.5\n2,1,great\n2,2,oops\n")
    with pytest.raises(DataError) as err:
        read_interactions(f, user="u", item="i", rating="score")
    _assert_where(err, f, "score", 2)
    assert "'great'" in str(err.value)


def test_missing_rating_value_is_an_error(tmp_path):
    f = _write(tmp_path / "log.csv", "user,item,rating\n1,1,4\n1,2,\n")
    with pytest.raises(DataError) as err:
        read_interactions(f, rating="rating")
    _assert_where(err, f, "rating", 1)


def test_unparseable_timestamp(tmp_path):
    f = _write(tmp_path / "log.csv", "user,item,ts\n1,1,100\n1,2,yesterday\n")
    with pytest.raises(DataError) as err:
        read_interactions(f, timestamp="ts")
    _assert_where(err, f, "ts", 1)
    assert "'yesterday'" in str(err.value)


@pytest.mark.parametrize("body, column, row", [
    ("user,item\n1,1\n,2\n", "user", 1),            # empty numeric ID
    ("user,item\na,x\nb,x\nc,\n", "item", 2),      # empty text ID
    ("user,item\na,x\n   ,y\n", "user", 1),         # blank text ID
])
def test_missing_ids_name_file_column_row(tmp_path, body, column, row):
    f = _write(tmp_path / "log.csv", body)
    with pytest.raises(DataError) as err:
        read_interactions(f)
    _assert_where(err, f, column, row)


def test_nan_ids_in_dataframe():
    src = pd.DataFrame({"user": [1.0, 2.0, np.nan], "item": [1, 2, 3]})
    with pytest.raises(DataError) as err:
        read_interactions(src, name="frame")
    assert err.value.column == "user" and err.value.row == 2 and "file frame" in str(err.value)
    # Without NaN, integral float IDs become int64.
    assert read_interactions(src.dropna())["user"].dtype == np.int64


@pytest.mark.parametrize("body", ["", "user,item\n"])
def test_empty_file(tmp_path, body):
    f = _write(tmp_path / "log.csv", body)
    with pytest.raises(DataError, match="empty file") as err:
        read_interactions(f)
    assert str(f) in str(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        read_table(tmp_path / "absent.csv")
    assert str(tmp_path / "absent.csv") in str(err.value)


def test_split_column_normalised_and_validated(tmp_path):
    f = _write(tmp_path / "log.csv", "user,item,fold\n1,1,train\n1,2,Validation\n1,3,test\n")
    assert read_interactions(f, split="fold")["split"].tolist() == ["train", "valid", "test"]
    g = _write(tmp_path / "bad.csv", "user,item,fold\n1,1,train\n1,2,holdout\n")
    with pytest.raises(DataError) as err:
        read_interactions(g, split="fold")
    _assert_where(err, g, "fold", 1)


def test_read_table_separators(tmp_path):
    dat = _write(tmp_path / "r.dat", "1::2::5::100\n3::4::1::200\n")
    df = read_table(dat, header=None)
    assert df.shape == (2, 4) and df.iloc[1, 0] == 3
    txt = _write(tmp_path / "r.txt", "a b\n1 2\n3   4\n")
    assert read_table(txt)["b"].tolist() == [2, 4]


def test_side_table_multi_valued_and_key_rename(tmp_path):
    f = _write(tmp_path / "items.csv", "movieId,title,genres\n1,Heat,Action|Crime\n2,\"Up, Up\",\n3,X,Drama\n")
    df = read_side_table(f, key="movieId", key_as="item", multi_valued={"genres": "|"})
    assert list(df.columns) == ["item", "title", "genres"]
    assert df["genres"].tolist() == [["Action", "Crime"], [], ["Drama"]]
    assert df["title"].tolist()[1] == "Up, Up"


def test_side_table_duplicate_key(tmp_path):
    f = _write(tmp_path / "items.csv", "item,title\n1,a\n2,b\n1,c\n")
    with pytest.raises(DataError, match="duplicate key") as err:
        read_side_table(f, key="item")
    _assert_where(err, f, "item", 2)


def test_side_table_missing_multi_valued_column(tmp_path):
    f = _write(tmp_path / "items.csv", "item,title\n1,a\n")
    with pytest.raises(DataError) as err:
        read_side_table(f, key="item", multi_valued={"tags": ","})
    _assert_where(err, f, "tags", None)


def test_atomic_outputs_follow_the_umask(tmp_path):
    import os

    from recsys.io_utils import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
