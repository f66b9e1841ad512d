"""Hostile input to the data loaders and `recsys data` (issue 19: IDs and loading).

Every command case runs `recsys data --dataset generic --path FILE ...` in this process
(:func:`recsys.testing.hostile.cli_case`) and asserts its exit status (2: a bad option, refused before any file is
read; 1: bad data; 0: a correct result), its one-line message naming the file, column and row, and that every input
file is byte-identical afterwards. Correct results also assert the counts the command reports. Direct loader calls
check what the command cannot show (the ID values themselves). ``# finding N`` marks the cases that reproduce the
issue's numbered findings (each failed before its fix).
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import os

# Imported before any command runs: Lightning attaches its console handler to the stderr of the moment it is
# first imported, and a command's captured stderr must not become that stream.
import lightning  # noqa: F401
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.interactions import preprocess
from recsys.data.io import read_interactions, read_side_table
from recsys.data.prepared import prepare
from recsys.data.splits import split_interactions
from recsys.data.vocab import Vocabulary, as_id_type
from recsys.datasets import load_generic
from recsys.errors import DataError
from recsys.testing.hostile import cli_case, run_cli

U63 = 2**63  # the first ID that int64 cannot hold
U64_MAX = 2**64 - 1


def _parquet(columns: dict) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _write(d, files: dict[str, bytes | str]) -> list:
    paths = []
    for name, content in files.items():
        p = d / name
        p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        paths.append(p)
    return paths


def _data_case(tmp_path, files: dict, args: list[str], status: int, message: str | None):
    """Write `files`, run `recsys data --dataset generic --path FIRST ARGS` ({d} is the folder), check all three."""
    paths = _write(tmp_path, files)
    argv = ["data", "--dataset", "generic", "--path", str(paths[0]), *[a.replace("{d}", str(tmp_path)) for a in args]]
    return cli_case(argv, status, message, unchanged=paths)


def _load_case(tmp_path, files: dict, args: list[str] = ()):
    """A correct result of `recsys data`: the file as loaded, with nothing held out (a few rows fill no split)."""
    return _data_case(tmp_path, files, [*args, "--split-ratios", "1,0,0"], 0, None)


# ------------------------------------------------------------------------------------ malformed interaction files
_BINARY = bytes(range(256)) * 8
_LATIN1 = "user,item\n1,café\n1,naïve\n".encode("latin-1")

MALFORMED = {
    "empty-0-bytes": ({"log.csv": b""}, [], r"empty file \(0 bytes\).*log\.csv"),
    "whitespace-only": ({"log.csv": "\n\n  \n"}, [], r"empty file.*log\.csv"),
    "bom-only": ({"log.csv": b"\xef\xbb\xbf"}, [], r"empty file.*log\.csv"),
    "header-only": ({"log.csv": "user,item\n"}, [], r"empty file \(header only, no data rows\)"),
    "wrong-columns": ({"log.csv": "userId,movieId\n1,2\n"}, [],
                      r"missing column 'user'; available columns: \['userId', 'movieId'\].*column 'user'"),
    "duplicate-column-names": ({"log.csv": "user,user,item\n1,2,3\n"}, [], r"names column 'user' twice"),
    "header-repeated-mid-file": ({"log.csv": "user,item\n1,2\nuser,item\n3,4\n"}, [],
                                 r"data row 1 repeats the header.*row 1"),
    "binary-with-nul": ({"log.csv": _BINARY}, [], r"a binary file, not delimited text \(NUL byte at offset 0"),
    "binary-no-nul": ({"log.csv": bytes(range(128, 256)) * 8}, [],
                      r"not utf-8 text: byte 0x80 at offset 0 \(line 1\).*encoding: latin-1"),
    "latin1-without-encoding": ({"log.csv": _LATIN1}, [],
                                r"not utf-8 text: byte 0xe9 at offset \d+ \(line 2\).*--option encoding=latin-1"),
    "utf16-without-encoding": ({"log.csv": "user,item\n1,2\n".encode("utf-16")}, [],
                               r"UTF-16 text.*encoding: utf-16"),
    "ragged-too-many-fields": ({"log.csv": "user,item\n1,2\n3,4,5\n"}, [],
                               r"cannot parse delimited text.*Expected 2 fields in line 3, saw 3"),
    "ragged-too-few-fields": ({"log.csv": "user,item\n1,2\n3\n"}, [], r"missing or empty ID.*'item', row 1"),
    "empty-user-id": ({"log.csv": "user,item\n1,2\n,3\n"}, [], r"missing or empty ID.*column 'user', row 1"),
    "blank-item-id": ({"log.csv": "user,item\na,x\nb,   \n"}, [], r"missing or empty ID.*column 'item', row 1"),
    "nul-in-id": ({"log.csv": b"user,item\nu\x001,2\n"}, [], r"binary file.*NUL byte at offset 11, line 2"),
    "newline-in-quoted-id": ({"log.csv": 'user,item\n"a\nb",2\n'}, [],
                             r"ID 'a\\nb' contains the control character U\+000A.*column 'user', row 0"),
    "tab-in-quoted-id": ({"log.csv": 'user,item\n1,"x\ty"\n'}, [], r"control character U\+0009.*'item', row 0"),
    "escape-char-in-id": ({"log.csv": "user,item\n1,x\x1by\n"}, [], r"control character U\+001B.*'item', row 0"),
    "id-beyond-uint64": ({"log.csv": f"user,item\n1,2\n{2**64},3\n"}, [],
                         r"ID 18446744073709551616 is beyond the 64-bit integer range.*dtype.*'user', row 1"),
    "negative-and-huge-ids": ({"log.csv": f"user,item\n-1,2\n{U63},3\n"}, [],
                              r"ID 9223372036854775808 needs unsigned 64 bits.*negative IDs \(first at row 0\).*row 1"),
    "rating-empty": ({"log.csv": "user,item,rating\n1,2,4\n1,3,\n"}, ["--option", "rating=rating"],
                     r"missing rating.*column 'rating', row 1"),
    "rating-nan-text": ({"log.csv": "user,item,rating\n1,2,NaN\n"}, ["--option", "rating=rating"],
                        r"missing rating \(an empty field, or NaN\).*column 'rating', row 0"),
    "rating-inf": ({"log.csv": "user,item,rating\n1,2,4\n1,3,inf\n"}, ["--option", "rating=rating"],
                   r"non-finite rating inf .*row 1"),
    "rating-text": ({"log.csv": "user,item,rating\n1,2,great\n"}, ["--option", "rating=rating"],
                    r"non-numeric rating 'great'.*row 0"),
    "timestamp-text": ({"log.csv": "user,item,ts\n1,2,100\n1,3,yesterday\n"}, ["--option", "timestamp=ts"],
                       r"unparseable timestamp 'yesterday'.*column 'ts', row 1"),
    "timestamp-huge": ({"log.csv": "user,item,ts\n1,2,1e30\n"}, ["--option", "timestamp=ts"],
                       r"timestamp '?1e\+?30'? is out of range.*row 0"),
    "timestamp-bad-date": ({"log.csv": "user,item,ts\n1,2,2021-02-30\n"}, ["--option", "timestamp=ts"],
                           r"unparseable timestamp '2021-02-30'"),
    "split-bad-value": ({"log.csv": "user,item,fold\n1,2,train\n1,3,holdout\n"}, ["--option", "split=fold"],
                        r"unknown split value 'holdout'.*row 1"),
    "wrong-separator": ({"log.csv": "user;item\n1;2\n"}, [], r"missing column 'user'; available.*'user;item'"),
    "dtype-int-on-text": ({"log.csv": "user,item\n1,abc\n"}, ["--option", "dtype={item: int}"],
                          r"ID 'abc' is not an integer \(dtype int was asked.*'item', row 0"),
    "rating-threshold-no-rating": ({"log.csv": "user,item\n1,2\n"}, ["--rating-threshold", "3"],
                                   r"rating_threshold is set but 'log' has no rating column"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_interaction_file(tmp_path, case):
    files, args, message = MALFORMED[case]
    _data_case(tmp_path, files, args, 1, message)


# ------------------------------------------------------------------------------------------------ Parquet and paths
PARQUET = {
    "float-ids": ({"user": [1.5, 2.0], "item": [1, 2]}, r"non-integer numeric ID 1\.5.*column 'user', row 0"),
    "nan-ids": ({"user": [1.0, None], "item": [1, 2]}, r"missing or empty ID.*column 'user', row 1"),
    "bool-ids": ({"user": [True, False], "item": [1, 2]}, r"boolean IDs.*column 'user'"),
    "list-ids": ({"user": [[1], [2]], "item": [1, 2]}, r"unsupported ID value.*type .*'user', row 0"),
    "text-ratings": ({"user": [1, 2], "item": [1, 2], "rating": ["4", "abc"]}, r"non-numeric rating 'abc'.*row 1"),
    "bool-timestamps": ({"user": [1, 2], "item": [1, 2], "ts": [True, False]}, r"boolean timestamp column"),
    "float-ids-beyond-2-53": ({"user": [2.0**60, 1.0], "item": [1, 2]}, r"stored as a float.*2\*\*53.*row 0"),
}


@pytest.mark.parametrize("case", list(PARQUET), ids=list(PARQUET))
def test_parquet_with_wrong_types(tmp_path, case):
    columns, message = PARQUET[case]
    args = []
    if "rating" in columns:
        args = ["--option", "rating=rating"]
    if "ts" in columns:
        args = ["--option", "timestamp=ts"]
    _data_case(tmp_path, {"log.parquet": _parquet(columns)}, args, 1, message)


def test_parquet_that_is_not_parquet(tmp_path):
    _data_case(tmp_path, {"log.parquet": "user,item\n1,2\n"}, [], 1, r"cannot read Parquet file.*log\.parquet")


def test_directory_given_as_file(tmp_path):
    (tmp_path / "log.csv").mkdir()
    cli_case(["data", "--dataset", "generic", "--path", str(tmp_path / "log.csv")], 1,
             r"expected a file but found a directory.*log\.csv", unchanged=[tmp_path])


def test_missing_file(tmp_path):
    cli_case(["data", "--dataset", "generic", "--path", str(tmp_path / "absent.csv")], 1,
             r"file not found.*absent\.csv", unchanged=[tmp_path])


def test_fifo_given_as_file(tmp_path):
    fifo = tmp_path / "log.csv"
    os.mkfifo(fifo)
    cli_case(["data", "--dataset", "generic", "--path", str(fifo)], 1, r"not a regular file.*log\.csv",
             unchanged=[tmp_path])


# ------------------------------------------------------------------------------------------------ compression
def test_corrupt_gzip(tmp_path):
    _data_case(tmp_path, {"log.csv.gz": "user,item\n1,2\n"}, [], 1, r"cannot decompress \(gzip\).*log\.csv\.gz")


def test_truncated_gzip(tmp_path):
    whole = gzip.compress(("user,item\n" + "".join(f"{i},{i}\n" for i in range(5000))).encode())
    _data_case(tmp_path, {"log.csv.gz": whole[: len(whole) // 2]}, [], 1, r"cannot decompress \(gzip\)")


def test_zstd_without_or_with_zstandard(tmp_path):
    try:
        import zstandard
    except ImportError:
        _data_case(tmp_path, {"log.csv.zst": b"\x28\xb5\x2f\xfd whatever"}, [], 1, r"pip install zstandard")
    else:
        blob = zstandard.ZstdCompressor().compress(b"user,item\n1,2\n")
        res = _load_case(tmp_path, {"log.csv.zst": blob})
        assert "1 users, 1 items" in res.out


@pytest.mark.parametrize("name, pack", [("log.csv.gz", gzip.compress), ("log.csv.bz2", bz2.compress),
                                        ("log.csv.xz", lzma.compress), ("log.tsv.gz", gzip.compress)])
def test_compression_inferred_from_the_name(tmp_path, name, pack):  # finding 6
    sep = "\t" if ".tsv" in name else ","
    body = f"user{sep}item\n1{sep}007\n1{sep}7\n2{sep}7\n"
    (tmp_path / name).write_bytes(pack(body.encode()))
    assert load_generic(tmp_path / name).interactions["item"].tolist() == ["007", "7", "7"]
    res = _load_case(tmp_path, {name: pack(body.encode())})
    assert "2 users, 2 items, 3 interactions" in res.out and "item str" in res.out


# ------------------------------------------------------------------------------------------------ bad options
OPTIONS = {
    "unknown-encoding": (["--option", "encoding=klingon"], r"unknown text encoding 'klingon'"),
    "unknown-loader-option": (["--option", "colour=red"], r"dataset 'generic' has no option 'colour'.*encoding"),
    "option-without-equals": (["--option", "encoding"], r"--option expects KEY=VALUE"),
    "option-given-twice": (["--option", "sep=,", "--option", "sep=;"], r"--option sep is given twice"),
    "bad-id-dtype": (["--option", "dtype={item: float}"], r"dtype of ID column 'item' must be str or int"),
    "bad-yaml-mapping": (["--option", "dtype={item: [}"], r"--option dtype: not a YAML mapping"),
    "split-method-typo": (["--split-method", "tempral"],
                          r"split.method.*random.*temporal.*'tempral'"),  # finding 10
    "rating-threshold-nan": (["--option", "rating=rating", "--rating-threshold", "nan"],
                             r"rating_threshold must be a finite number"),
    "unknown-flag": (["--colour"], r"unrecognized arguments: --colour"),
}


@pytest.mark.parametrize("case", list(OPTIONS), ids=list(OPTIONS))
def test_bad_option_is_a_usage_error(tmp_path, case):
    args, message = OPTIONS[case]
    _data_case(tmp_path, {"log.csv": "user,item,rating\n1,2,4\n"}, args, 2, message)


# ------------------------------------------------------------------------------------------------ side tables
SIDE = {
    "empty-side-table": ("items.csv", "item,title\n", r"empty file \(header only.*items\.csv"),
    "zero-byte-side-table": ("items.csv", "", r"empty file \(0 bytes\).*items\.csv"),
    "conflicting-duplicate-keys": ("items.csv", "item,title\n1,Heat\n2,Up\n1,Alien\n",
                                   r"duplicate key 1 with a different row than row 0.*items\.csv.*'item', row 2"),
    "missing-key-column": ("items.csv", "sku,title\n1,Heat\n", r"missing column 'item'.*items\.csv"),
    "missing-key": ("items.csv", "item,title\n1,Heat\n,Up\n", r"missing or empty ID.*items\.csv.*row 1"),
    "nul-in-item-text": ("items.csv", b"item,title\n1,He\x00at\n", r"binary file.*items\.csv"),
    "binary-side-table": ("items.csv", _BINARY, r"binary file.*items\.csv"),
}


@pytest.mark.parametrize("case", list(SIDE), ids=list(SIDE))
def test_bad_side_table(tmp_path, case):
    name, body, message = SIDE[case]
    _data_case(tmp_path, {"log.csv": "user,item\n1,1\n2,2\n", name: body}, ["--option", "items_path={d}/" + name],
               1, message)


def test_side_table_directory(tmp_path):
    (tmp_path / "items.csv").mkdir()
    _data_case(tmp_path, {"log.csv": "user,item\n1,1\n"}, ["--option", "items_path={d}/items.csv"], 1,
               r"expected a file but found a directory.*items\.csv")


def test_side_table_rows_for_unknown_items_are_counted(tmp_path, caplog):
    res = _load_case(tmp_path, {"log.csv": "user,item\n1,1\n2,2\n", "items.csv": "item,title\n1,a\n2,b\n9,c\nx,d\n"},
                     ["--option", "items_path={d}/items.csv"])
    assert "item_rows_unknown 2" in res.out and "2 of 4 rows name items that are not in the interactions" in caplog.text


def test_side_table_exact_duplicates_dropped_and_counted(tmp_path):
    res = _load_case(tmp_path, {"log.csv": "user,item\n1,1\n2,2\n", "items.csv": "item,title\n1,a\n2,b\n1,a\n"},
                     ["--option", "items_path={d}/items.csv"])
    assert "items_duplicate_rows_dropped 1" in res.out and "item side table: 2 rows" in res.out


def test_side_table_text_with_unicode_and_controls_is_kept(tmp_path):
    body = 'item,title\n1,"two\nlines"\n2,caf\u00e9 \U0001F3AC\n3,\u202eright-to-left\u202c\n4,bell\x07\n'
    _write(tmp_path, {"log.csv": "user,item\n1,1\n1,2\n2,3\n2,4\n", "items.csv": body})
    ds = load_generic(tmp_path / "log.csv", items_path=tmp_path / "items.csv")
    assert ds.items.set_index("item")["title"].to_dict() == {1: "two\nlines", 2: "caf\u00e9 \U0001F3AC",
                                                            3: "\u202eright-to-left\u202c", 4: "bell\x07"}


# ------------------------------------------------------------------------------------------------ correct results
def test_leading_zeros_keep_two_items(tmp_path):  # finding 6
    _write(tmp_path, {"log.csv": "user,item\n1,007\n1,7\n2,7\n2,07\n"})
    df = read_interactions(tmp_path / "log.csv")
    assert df["item"].tolist() == ["007", "7", "7", "07"] and df["user"].dtype == np.int64
    res = _load_case(tmp_path, {"log.csv": "user,item\n1,007\n1,7\n2,7\n2,07\n"})
    assert "2 users, 3 items, 4 interactions" in res.out and "ID types: user int64, item str" in res.out


def test_leading_zeros_as_integers_on_request(tmp_path):
    res = _load_case(tmp_path, {"log.csv": "user,item\n1,007\n1,7\n"}, ["--option", "dtype={item: int}"])
    assert "1 users, 1 items" in res.out and "item int64" in res.out


def test_integer_looking_ids_as_text_on_request(tmp_path):
    res = _load_case(tmp_path, {"log.csv": "user,item\n1,10\n1,9\n"}, ["--option", "dtype={item: str}"])
    assert "item str" in res.out
    assert read_interactions(tmp_path / "log.csv", dtype={"item": "str"})["item"].tolist() == ["10", "9"]


@pytest.mark.parametrize("text", ["+7", "7.0", "1e3", "0x1f", "-0"])
def test_non_canonical_integers_stay_text(tmp_path, text):  # finding 6
    _write(tmp_path, {"log.csv": f"user,item\n1,{text}\n1,7\n"})
    df = read_interactions(tmp_path / "log.csv")
    assert df["item"].tolist() == [text, "7"]


def test_whitespace_in_ids_stripped_and_counted(tmp_path, caplog):  # finding 6
    _write(tmp_path, {"log.csv": "user,item\n u1,a\nu1,b\nu2 ,a\n"})
    assert load_generic(tmp_path / "log.csv").meta["user_ids_with_whitespace"] == 2
    res = _load_case(tmp_path, {"log.csv": "user,item\n u1,a\nu1,b\nu2 ,a\n"})
    assert "2 users, 2 items" in res.out and "user_ids_with_whitespace 2" in res.out
    assert "2 user IDs had leading/trailing whitespace, stripped (first at row 0: ' u1')" in caplog.text


def test_whitespace_in_ids_kept_on_request(tmp_path, caplog):
    res = _load_case(tmp_path, {"log.csv": "user,item\n u1,a\nu1,b\n"}, ["--option", "strip_ids=false"])
    assert "2 users" in res.out and "kept (strip_ids: false)" in caplog.text


def test_bom_and_crlf(tmp_path):
    res = _load_case(tmp_path, {"log.csv": b"\xef\xbb\xbfuser,item\r\n1,2\r\n1,4\r\n3,4\r\n"})
    assert "2 users, 2 items" in res.out and "user int64, item int64" in res.out


def test_latin1_with_the_encoding_option(tmp_path):  # finding 6
    _write(tmp_path, {"log.csv": _LATIN1})
    assert load_generic(tmp_path / "log.csv", encoding="latin-1").interactions["item"].tolist() == ["café", "naïve"]
    res = _load_case(tmp_path, {"log.csv": _LATIN1}, ["--option", "encoding=latin-1"])
    assert "1 users, 2 items" in res.out


def test_utf16_with_the_encoding_option(tmp_path):
    res = _load_case(tmp_path, {"log.csv": "user,item\n1,\u00e9t\u00e9\n1,2\n".encode("utf-16")},
                     ["--option", "encoding=utf-16"])
    assert "1 users, 2 items" in res.out and "item str" in res.out


def test_other_columns_and_separator(tmp_path):
    res = _load_case(tmp_path, {"log.txt": "uid;sku;when\nu1;7;2021-05-01\nu1;8;1600000000\n"},
                     ["--option", "user=uid", "--option", "item=sku", "--option", "timestamp=when",
                      "--option", "sep=;"])
    assert "1 users, 2 items, 2 interactions" in res.out and "user str, item int64" in res.out


def test_unicode_ids_round_trip(tmp_path, caplog):
    ids = ["\U0001F600", "\u05e9\u05dc\u05d5\u05dd", "a\u200fb", "caf\u00e9", "NA", "nan", "null"]
    body = "user,item\n" + "".join(f"u,{i}\n" for i in ids)
    res = _load_case(tmp_path, {"log.csv": body})
    assert f"1 users, {len(ids)} items" in res.out
    assert "1 item IDs contain invisible format characters" in caplog.text
    assert read_interactions(tmp_path / "log.csv")["item"].tolist() == ids


def test_negative_integer_ids(tmp_path):
    res = _load_case(tmp_path, {"log.csv": "user,item\n-5,-1\n-5,0\n3,0\n"})
    assert "user int64, item int64" in res.out


def test_multi_character_separator(tmp_path):
    res = _load_case(tmp_path, {"log.dat": "user::item\n1::007\n1::7\n"})
    assert "2 items" in res.out and "item str" in res.out


TINY = {
    "one-user-one-item": ("user,item\n1,1\n", "1 users, 1 items, 1 interactions (train 1, valid 0, test 0"),
    "one-item-many-users": ("user,item\n" + "".join(f"{u},only\n" for u in range(500)),
                            "500 users, 1 items, 500 interactions (train 500"),
    "huge-catalogue-one-interaction-each": ("user,item\n" + "".join(f"u{i},i{i}\n" for i in range(50_000)),
                                            "50000 users, 50000 items, 50000 interactions"),
}


@pytest.mark.parametrize("case", list(TINY), ids=list(TINY))
def test_tiny_and_huge_catalogues(tmp_path, case):
    # With one interaction per user, a held-out split is impossible: said in one line, then shown without one.
    body, summary = TINY[case]
    _data_case(tmp_path, {"log.csv": body}, [], 1, r"valid and test are empty: every user has fewer than 2")
    res = _load_case(tmp_path, {"log.csv": body})
    assert summary in res.out


def test_split_ratios_option_is_checked(tmp_path):
    _data_case(tmp_path, {"log.csv": "user,item\n1,1\n"}, ["--split-ratios", "1,0"], 2,
               r"--split-ratios expects three numbers")


# ------------------------------------------------------------------------------------------------ rating policy
def test_negative_rating_counted_as_positive_is_reported(tmp_path, caplog):  # finding 6
    caplog.set_level(logging.INFO)
    _load_case(tmp_path, {"log.csv": "user,item,rating\n1,1,-5\n1,2,0\n2,1,4\n"},
               ["--option", "rating=rating"])
    assert "2 interactions with rating <= 0 counted as positives (1 negative" in caplog.text


def test_negative_rating_dropped_by_threshold(tmp_path, caplog):  # finding 6
    caplog.set_level(logging.INFO)
    res = _load_case(tmp_path, {"log.csv": "user,item,rating\n1,1,-5\n1,2,4\n1,3,4\n2,1,4\n"},
                     ["--option", "rating=rating", "--rating-threshold", "1"])
    assert "1 below rating threshold 1.0" in caplog.text
    assert "1 negative ratings, 1 of them below the threshold" in caplog.text
    assert "2 users, 3 items, 3 interactions" in res.out


def test_threshold_that_keeps_a_negative_rating_says_so(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _load_case(tmp_path, {"log.csv": "user,item,rating\n1,1,-5\n1,2,4\n"},
               ["--option", "rating=rating", "--rating-threshold", "-10"])
    assert "1 interactions with rating <= 0 kept as positives by rating threshold -10" in caplog.text


def test_rating_policy_in_preprocess():  # finding 6
    df = pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 1], "rating": np.array([-5, 4, 5], dtype=np.float32)})
    out, report = preprocess(df, rating_threshold=1.0)
    assert -5 not in out["rating"].tolist() and dict(report.steps)["below rating threshold 1.0"] == 1
    _, report = preprocess(df)
    assert report.notes == ["1 interactions with rating <= 0 counted as positives (1 negative; "
                            "--data.preprocess.rating_threshold drops ratings below it)"]


# ------------------------------------------------------------------------------------------------ ID width (uint64)
def test_uint64_ids_from_text_keep_their_width(tmp_path):  # finding 3
    body = f"user,item\n{U63},{U64_MAX}\n{U63 + 1},{U64_MAX}\n1,{U63}\n"
    _write(tmp_path, {"log.csv": body})
    df = read_interactions(tmp_path / "log.csv")
    assert df["user"].dtype == np.uint64 and df["user"].tolist() == [U63, U63 + 1, 1]
    assert df["item"].tolist() == [U64_MAX, U64_MAX, U63]
    res = _load_case(tmp_path, {"log.csv": body})
    assert "user uint64, item uint64" in res.out


def test_uint64_parquet_and_vocabulary_round_trip(tmp_path):  # finding 3
    pq.write_table(pa.table({"user": pa.array([U63, 5, U64_MAX, U63], pa.uint64()), "item": [1, 2, 3, 2]}),
                   tmp_path / "log.parquet")
    data = prepare(load_generic(tmp_path / "log.parquet"))
    assert data.user_vocab.ids.dtype == np.uint64
    data.user_vocab.save(tmp_path / "v.parquet")
    back = Vocabulary.load(tmp_path / "v.parquet", "user")
    assert back.ids.dtype == np.uint64 and sorted(back.ids.tolist()) == [5, U63, U64_MAX]
    assert pq.read_schema(tmp_path / "v.parquet").field("user").type == pa.uint64()
    # Text from a --users file finds the uint64 IDs; nothing wraps to a negative row or another user.
    rows = back.encode(np.array([str(U63), "5", str(U64_MAX), "-1", str(2**64)], dtype=object), missing="ignore")
    assert rows.tolist()[:3] == back.encode(np.array([U63, 5, U64_MAX], dtype=np.uint64)).tolist()
    assert rows.tolist()[3:] == [-1, -1]


def test_vocabulary_lookup_is_exact_across_types():  # finding 3
    signed = Vocabulary(np.array([-U63, -1, 5], dtype=np.int64), "user")
    # 2**63 as uint64 would wrap to -2**63, and 2**64-1 to -1: neither may match.
    assert signed.encode(np.array([U63, U64_MAX], dtype=np.uint64), missing="ignore").tolist() == [-1, -1]
    unsigned = Vocabulary(np.array([5, U64_MAX], dtype=np.uint64), "user")
    assert unsigned.encode(np.array([-1, 5], dtype=np.int64), missing="ignore").tolist() == [-1, 0]
    mixed = np.array([5.0, 5.5, float("inf"), True, "5", " 5", "abc", U63], dtype=object)
    assert signed.encode(mixed, missing="ignore").tolist() == [2, -1, -1, -1, 2, 2, -1, -1]
    ids, ok = as_id_type(np.array([str(U63), "x"], dtype=object), np.uint64)
    assert ids[0] == U63 and ok.tolist() == [True, False]


def test_unknown_text_id_names_its_own_row():  # finding 10
    v = Vocabulary(np.array([1, 2, 3]), "user")
    with pytest.raises(DataError, match=r"unknown user ID 'abc' \(1 unknown in all\).*users\.txt.*row 2"):
        v.encode(np.array(["1", "2", "abc"], dtype=object), source="users.txt")


def test_uint64_ids_round_trip_to_score_output(tmp_path):  # finding 3
    rng = np.random.default_rng(0)
    rows = [(U63 + u, U64_MAX - int(i)) for u in range(12) for i in rng.choice(10, 4, replace=False)]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "users.txt").write_text(f"user\n{U63}\n{U63 + 3}\n")
    from conftest import REPO

    fit = run_cli(["fit", "--config", str(REPO / "configs" / "pop.yaml"), "--run-dir", str(tmp_path / "run"),
                   "--data.dataset", "generic", "--data.path", str(tmp_path / "log.csv"),
                   "--trainer.enable_progress_bar", "false"])
    assert fit.status == 0, fit.err[-2000:]
    cli_case(["score", "--run-dir", str(tmp_path / "run"), "--k", "3", "--out", str(tmp_path / "top.parquet"),
              "--users", str(tmp_path / "users.txt")], 0, unchanged=[tmp_path / "run", tmp_path / "users.txt"])
    top = pq.read_table(tmp_path / "top.parquet")
    assert top.schema.field("user").type == pa.uint64() and top.schema.field("item").type == pa.uint64()
    assert set(top.column("user").to_pylist()) == {U63, U63 + 3}
    assert set(top.column("item").to_pylist()) <= {i for _, i in rows}


# ------------------------------------------------------------------------------------------------ direct loader calls
def test_dataframe_with_mixed_id_types_is_refused():
    with pytest.raises(DataError, match=r"mixed ID types: an integer at row 0 and a string at row 1.*row 1"):
        read_interactions(pd.DataFrame({"user": [7, "7"], "item": [1, 2]}), name="frame")


def test_dataframe_string_ids_are_not_converted():
    df = read_interactions(pd.DataFrame({"user": ["1", "2"], "item": ["007", "7"]}))
    assert df["user"].tolist() == ["1", "2"] and df["item"].tolist() == ["007", "7"]


def test_side_table_keys_match_by_identity(tmp_path):
    # "007" in the side table is not the integer item 7; "7" is.
    _write(tmp_path, {"log.csv": "user,item\n1,7\n", "items.csv": "item,title\n007,zero-padded\n7,plain\n"})
    ds = load_generic(tmp_path / "log.csv", items_path=tmp_path / "items.csv")
    assert ds.items["item"].tolist() == [7] and ds.items["title"].tolist() == ["plain"]
    assert ds.meta["item_rows_unknown"] == 1


def test_side_table_of_uint64_items(tmp_path):  # finding 3
    _write(tmp_path, {"log.csv": f"user,item\n1,{U64_MAX}\n1,{U63}\n",
                      "items.csv": f"item,title\n{U64_MAX},big\n{U63 + 1},other\nx,text\n"})
    raw = load_generic(tmp_path / "log.csv", items_path=tmp_path / "items.csv")
    assert raw.meta["item_rows_unknown"] == 2 and raw.items["item"].dtype == np.uint64
    data = prepare(raw)
    assert data.item_vocab.ids.dtype == np.uint64 and data.item_vocab.ids.tolist() == [U63, U64_MAX]
    assert data.item_table["item"].tolist() == [U63, U64_MAX] and data.item_table["title"].tolist()[1] == "big"


def test_side_table_whitespace_keys_counted(tmp_path):
    _write(tmp_path, {"items.csv": "item,title\n a,x\nb,y\n"})
    report: dict = {}
    df = read_side_table(tmp_path / "items.csv", key="item", report=report)
    assert df["item"].tolist() == ["a", "b"] and report == {"item_ids_with_whitespace": 1}


def test_split_method_typo_lists_the_methods():  # finding 10
    with pytest.raises(DataError, match=r"unknown split method 'tempral'.*auto, random, temporal, loo"):
        split_interactions("tempral", np.array([0, 0, 1]), None)
