"""The NGCF/LightGCN benchmark text format: `train.txt` / `test.txt` lines of `uid iid iid ...`.

Used by the Gowalla, Yelp2018 and Amazon-Book splits published with NGCF (Wang et al., SIGIR 2019) and LightGCN
(He et al., SIGIR 2020). A line holding only a uid is a user without items in that file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.datasets.base import RawDataset
from recsys.errors import DataError

__all__ = ["load_benchmark_txt", "read_benchmark_file"]

# Files of the format in split order; valid.txt is optional (some re-releases add one).
_SPLIT_FILES = (("train", "train.txt"), ("valid", "valid.txt"), ("test", "test.txt"))


def _is_int64(token: str) -> bool:
    try:
        return -(2**63) <= int(token) < 2**63
    except ValueError:
        return False


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def read_benchmark_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one `uid iid iid ...` file.

    Args:
        path: the text file.

    Returns:
        (users, items, all_uids): the interaction pairs as int64 arrays, and every uid that has a line (including
        users listed without items).

    Raises:
        DataError: the file is missing or a token is not a non-negative integer (with 0-based line number and token).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    uids: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh):
            tokens = line.split()
            if not tokens:
                continue
            try:
                values = np.array(tokens, dtype=np.int64)
            except (ValueError, OverflowError):
                bad = next((t for t in tokens if not _is_int64(t)), tokens[0])
                raise DataError(f"non-integer token {bad!r}", file=str(path), row=row) from None
            if (values < 0).any():
                raise DataError(f"negative id {int(values[values < 0][0])}", file=str(path), row=row)
            uids.append(int(values[0]))
            if len(values) > 1:
                items.append(values[1:])
                users.append(np.full(len(values) - 1, values[0], dtype=np.int64))
    return _concat(users), _concat(items), np.asarray(uids, dtype=np.int64)


def load_benchmark_txt(path: str | os.PathLike, name: str | None = None) -> RawDataset:
    """Load a directory holding train.txt and test.txt (and optionally valid.txt) in the NGCF/LightGCN format.

    Args:
        path: the directory.
        name: dataset name (default: the directory name).

    Returns:
        RawDataset with interactions (user int64, item int64, split "train"/"valid"/"test"); meta holds n_users and
        n_items (max id + 1, the format's convention) and the number of users listed without training items.

    Raises:
        DataError: missing directory or file, or a malformed line.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError("benchmark-txt expects a directory holding train.txt and test.txt", file=str(path))
    frames, all_uids, files = [], [], {}
    for split, filename in _SPLIT_FILES:
        file = path / filename
        if split == "valid" and not file.is_file():
            continue
        users, items, uids = read_benchmark_file(file)
        frames.append(pd.DataFrame({"user": users, "item": items, "split": split}))
        all_uids.append(uids)
        files[split] = str(file)
    interactions = pd.concat(frames, ignore_index=True)
    interactions["split"] = interactions["split"].astype(str)
    if len(interactions) == 0:
        raise DataError("no interactions in any split file", file=str(path))
    uids = np.concatenate(all_uids)
    train_users = set(interactions.loc[interactions["split"] == "train", "user"].unique().tolist())
    meta = {
        "source": str(path),
        "files": files,
        "format": "NGCF/LightGCN uid iid iid ...",
        "n_users": int(max(uids.max(initial=-1), interactions["user"].max()) + 1),
        "n_items": int(interactions["item"].max() + 1),
        "users_without_train_items": len(set(uids.tolist()) - train_users),
    }
    return RawDataset(name=name or path.name, interactions=interactions, meta=meta)
