"""Batch top-k scoring of a finished run into Parquet, streamed chunk by chunk and written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.errors import DataError


def read_user_ids(path: str | Path) -> np.ndarray:
    """External user IDs from a text file (one per line), a CSV with a ``user`` column, or Parquet."""
    path = Path(path)
    if not path.exists():
        raise DataError("users file not found", file=str(path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.ParquetFile(path).read()
        col = "user" if "user" in t.column_names else t.column_names[0]
        return np.asarray(t.column(col).to_pylist(), dtype=object)
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    if lines and lines[0].lower() in ("user", "userid", "user_id"):
        lines = lines[1:]
    for i, ln in enumerate(lines):
        if not ln:
            raise DataError("empty user ID", file=str(path), column="user", row=i)
    if not lines:
        raise DataError("no user IDs in file", file=str(path))
    return np.asarray(lines, dtype=object)


def _score_fn_for_run(run_dir: Path, data_dir: Path):
    """The cheapest score function for a run: its stored GEMM-ready tables, else the rebuilt model."""
    from recsys.runs import MODEL_FILE, load_checkpoint

    ckpt = load_checkpoint(run_dir / MODEL_FILE)
    if "tables" in ckpt:
        from recsys.scoring.topk import gemm_score_fn

        t = ckpt["tables"]
        return gemm_score_fn(t["queries"], t["items"])
    from recsys.recommender import score_function
    from recsys.runs import load_model

    model, data = load_model(run_dir)
    return score_function(model, data, up_to="all")


def score_run(run_dir: str | Path, out: str | Path, *, k: int = 100, users_file: str | Path | None = None,
              keep_seen: bool = False, chunk_size: int | None = None) -> int:
    """Write the top-k items of every user (or of the listed users) of a run to Parquet.

    Columns: ``user`` and ``item`` (external IDs), ``rank`` (1-based), ``score``. Items a user interacted with in
    training are excluded unless ``keep_seen``. Returns the number of rows written.

    Args:
        run_dir: a finished ``recsys fit`` run.
        out: the Parquet file to write (replaced atomically).
        k: list length.
        users_file: external user IDs to score (all users when None).
        keep_seen: keep training items in the lists.
        chunk_size: users per chunk (from a memory budget when None).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.data.vocab import Vocabulary
    from recsys.io_utils import arrow_to_numpy, atomic_path, numpy_to_arrow
    from recsys.runs import require_run_dir
    from recsys.scoring.topk import RowSets, iter_topk

    d = require_run_dir(run_dir, "model.pt", "data/split.parquet")
    user_vocab = Vocabulary.load(d / "data/user_vocab.parquet", "user")
    item_vocab = Vocabulary.load(d / "data/item_vocab.parquet", "item")
    if users_file is not None:
        rows = user_vocab.encode(read_user_ids(users_file), source=str(users_file))
    else:
        rows = np.arange(len(user_vocab))
    exclude = None
    if not keep_seen:
        split = pq.ParquetFile(d / "data/split.parquet").read(columns=["user", "item", "split"])
        train = arrow_to_numpy(split.column("split")) == 0
        users = arrow_to_numpy(split.column("user"))[train]
        exclude = RowSets.from_pairs(users, arrow_to_numpy(split.column("item"))[train], len(user_vocab))
    score_fn = _score_fn_for_run(d, d / "data")
    schema = pa.schema([("user", _arrow_type(user_vocab)), ("item", _arrow_type(item_vocab)),
                        ("rank", pa.int32()), ("score", pa.float32())])
    n = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for urows, idx, vals in iter_topk(score_fn, rows, len(item_vocab), k, exclude, chunk_size):
            idx, vals = idx.numpy(), vals.numpy()
            keep = idx >= 0
            u = np.broadcast_to(urows[:, None], idx.shape)[keep]
            ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), idx.shape)[keep]
            cols = [user_vocab.decode(u), item_vocab.decode(idx[keep]), ranks, vals[keep].astype(np.float32)]
            table = pa.Table.from_arrays([numpy_to_arrow(c) for c in cols], schema=schema)
            writer.write_table(table)
            n += len(u)
    return n


def _arrow_type(vocab):
    import pyarrow as pa

    return pa.string() if vocab.ids.dtype == object else pa.from_numpy_dtype(vocab.ids.dtype)
