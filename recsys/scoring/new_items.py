"""Score a catalogue that contains items unseen in training, embedded from their side-table text (zero-shot).

Text encoders (AlphaRec, the linear probe) embed any item from its flattened attributes with
``encoder.embed_new_items``; the new rows are appended after the trained catalogue, so trained item rows keep their
numbers and only the output vocabulary grows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.errors import DataError


def read_new_items(path: str | Path, trained_items, key: str = "item"):
    """The new-items side table: a key column ``key`` plus the training side table's attribute columns.

    Columns holding lists in the trained table (genres, tags) are split on ``|`` when given as strings, as the
    MovieLens loader does, so the flattened text matches training's.

    Raises:
        DataError: missing file or key column, duplicate keys (with the file, column and row).
    """
    from recsys.data.io import read_side_table

    table = read_side_table(path, key=key)
    listy = {c: "|" for c in table.columns if c != key and c in trained_items.columns
             and len(sample := trained_items[c].dropna()) and isinstance(sample.iloc[0], (list, tuple, np.ndarray))}
    return read_side_table(table, key=key, multi_valued=listy, name=str(path)) if listy else table


def new_item_tables(run, new_items: str | Path) -> tuple[np.ndarray, torch.Tensor]:
    """External IDs and scorer-prepared embeddings of the items in ``new_items``.

    Args:
        run: the :class:`recsys.runs.Run` being scored (its model is rebuilt from the validated config).
        new_items: the side table of the new items (CSV or Parquet).

    Shapes:
        -> ids [M], items [M, D]
    """
    import pandas as pd

    data = run.data()
    model = run.recommender(data)
    trained = data.item_table if data.item_table is not None else pd.DataFrame({"item": []})
    table = read_new_items(new_items, trained)
    ids = _as_vocab_ids(table["item"].to_numpy(), data.item_vocab.ids.dtype, new_items)
    known = data.item_vocab.encode(ids, missing="ignore")
    if (known >= 0).any():
        row = int(np.flatnonzero(known >= 0)[0])
        bad = ids[row].item() if isinstance(ids[row], np.generic) else ids[row]
        raise DataError(f"item {bad!r} is already in the trained catalogue", file=str(new_items),
                        column="item", row=row)
    return ids, model.new_item_table(table).float().cpu()


def _as_vocab_ids(ids: np.ndarray, dtype: np.dtype, source) -> np.ndarray:
    """New IDs in the trained vocabulary's ID type (so they decode alike), or a DataError naming the first misfit."""
    from recsys.data.vocab import as_id_type

    out, ok = as_id_type(ids, dtype)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise DataError(f"item ID {ids[row]!r} is not of the trained catalogue's ID type ({dtype})",
                        file=str(source), column="item", row=row)
    return out
