"""``recsys data``: load a dataset and print what it holds."""

from __future__ import annotations

import argparse


def cmd_data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="recsys data", description="Load a dataset and print what it contains.")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--path", default=None)
    a = p.parse_args(argv)
    from recsys.data.prepared import prepare
    from recsys.datasets import load_dataset

    raw = load_dataset(a.dataset, a.path)
    print(prepare(raw).summary())
    if raw.items is not None:
        print(f"item side table: {len(raw.items)} rows, columns {list(raw.items.columns)}")
    if raw.users is not None:
        print(f"user side table: {len(raw.users)} rows, columns {list(raw.users.columns)}")
    return 0

