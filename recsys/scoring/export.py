"""Export a run's user and item embeddings, with external IDs, for ANN serving systems (Parquet, or a faiss index)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from recsys.errors import RunDirError, ServingError

#: what ``export_run(format="faiss")`` writes, by role.
FAISS_FILES = {"index": "items.faiss", "item_ids": "item_ids.parquet", "users": "users.parquet",
               "description": "index.json"}


def export_run(run_dir: str | Path, out: str | Path, format: Literal["parquet", "faiss"] = "parquet",
               index=None) -> dict:
    """Write a run's embeddings for an external ANN service.

    ``parquet`` writes ``users.parquet`` and ``items.parquet`` (``id``, ``embedding``) plus ``scorer.json``.
    ``faiss`` writes ``items.faiss`` (the faiss index over the item table; ``faiss.read_index``, or
    ``faiss.read_index_binary`` for ``faiss:binary``), ``item_ids.parquet`` (``row`` of the index -> external
    ``id``, in the vocabulary's ID type), ``users.parquet`` and ``index.json`` (metric, normalisation, dimension,
    how to form queries); with ``faiss:binary,shortlist=S`` also ``items.parquet``, the float vectors that re-rank.

    The vectors are the scorer-prepared tables (e.g. L2-normalised, query divided by τ for cosine scorers), so the
    exported score is always the plain inner product ``user · item``: an inner-product index (faiss
    ``IndexFlatIP`` or any MIPS index) reproduces ``recsys score`` exactly (before its exclusions of seen items).

    Args:
        run_dir: a finished ``recsys fit`` run whose model is an embedding model.
        out: the output directory (files are replaced atomically).
        format: ``parquet`` or ``faiss``.
        index: with ``faiss``: the :class:`recsys.scoring.index.FaissSpec` to build (``faiss:flat`` when None).

    Raises:
        RunDirError: the run's model has no embedding tables (a baseline such as EASE).
        UsageError: ``out`` is not a directory or a new name, or lies inside a run directory.
        CheckpointError: ``model.pt``'s tables do not fit the run's vocabularies.
        ServingError: ``index`` is not a faiss spec, or is given with ``parquet``.
        MissingDependencyError: ``faiss`` without faiss installed.
    """
    from recsys.runs import Run
    from recsys.scoring.index import FaissSpec

    if format not in ("parquet", "faiss"):
        raise ServingError(f"export format must be parquet or faiss, got {format!r}")
    if format == "parquet" and index is not None:
        raise ServingError("an index spec applies to the faiss format only (--format faiss)")
    if format == "faiss" and not isinstance(index, FaissSpec | None):
        raise ServingError(f"the faiss format writes a faiss index: the index must be faiss:flat, faiss:ivf, "
                           f"faiss:hnsw or faiss:binary, not {index}")
    from recsys.io_utils import check_output_path

    # Before the run is read: a file, a device or a run directory (this one or another) is never written into.
    out = check_output_path(out, directory=True)
    run = Run.open(run_dir)
    payload = run.checked_payload()
    if payload.tables is None:
        raise RunDirError(f"the model in {str(run.path)!r} is not an embedding model (no user/item tables to export)")
    out.mkdir(parents=True, exist_ok=True)
    if format == "faiss":
        return _export_faiss(run, out, index or FaissSpec())
    info = {}
    for side, tensor in (("user", payload.queries), ("item", payload.items)):
        info[f"n_{side}s"] = _write_embeddings(out / f"{side}s.parquet", run.vocab(side).ids, tensor)
        info["dim"] = int(tensor.shape[1])
    desc = {"metric": "inner_product", "prepared": True, "dim": info["dim"], "trained_scorer": payload.scorer,
            "note": "vectors are already transformed by the scorer; score = users.embedding · items.embedding"}
    _write_json(out / "scorer.json", desc)
    return info


def _export_faiss(run, out: Path, spec) -> dict:
    """The faiss format of :func:`export_run`: build ``spec`` over the run's item table and write it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.io_utils import atomic_path, numpy_to_arrow
    from recsys.recommender import build_index
    from recsys.scoring.index import ServingTables

    payload = run.checked_payload()
    tables = ServingTables.from_payload(payload, file=str(run.path))
    built = build_index(spec, tables)
    with atomic_path(out / FAISS_FILES["index"]) as tmp:
        built.write(tmp)
    item_ids = run.vocab("item").ids
    with atomic_path(out / FAISS_FILES["item_ids"]) as tmp:
        rows = np.arange(len(item_ids), dtype=np.int64)
        pq.write_table(pa.table({"row": numpy_to_arrow(rows), "id": numpy_to_arrow(item_ids)}), tmp)
    n_users = _write_embeddings(out / FAISS_FILES["users"], run.vocab("user").ids, payload.queries)
    dim = int(payload.items.shape[1])
    binary = spec.index == "binary"
    files = dict(FAISS_FILES)
    desc = {
        "format": "faiss", "index": str(spec), "faiss_class": type(built.index).__name__,
        "read_with": "faiss.read_index_binary" if binary else "faiss.read_index",
        "metric": "hamming" if binary else "inner_product", "prepared": True, "normalized": tables.normalize,
        "dim": dim, "n_items": len(item_ids), "n_users": n_users, "trained_scorer": payload.scorer,
    }
    if binary:
        desc["code_bits"] = int(built.index.d)
        desc["queries"] = ("np.packbits(users.embedding >= 0, axis=1): the sign bits, zero-padded to whole bytes; "
                           "smaller distance is better")
        if spec.shortlist is not None:
            files["items"] = "items.parquet"
            _write_embeddings(out / files["items"], item_ids, payload.items)
            desc["rerank"] = {"shortlist": spec.shortlist, "score": "users.embedding · items.embedding"}
    else:
        desc["queries"] = "users.embedding as is; score = users.embedding · item vector (larger is better)"
    desc["files"] = files
    desc["note"] = ("vectors are already transformed by the scorer (unit norm and 1/τ for cosine scorers); index "
                    "row r is item_ids.id where item_ids.row == r")
    _write_json(out / FAISS_FILES["description"], desc)
    return {"n_users": n_users, "n_items": len(item_ids), "dim": dim, "index": str(spec),
            "faiss_class": desc["faiss_class"]}


def _write_embeddings(path: Path, ids, tensor) -> int:
    """``id`` (external IDs, their own type) and ``embedding`` (fixed-size float32 lists) as Parquet; the row count.

    Shapes:
        ids: [M]; tensor: [M, D]
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.io_utils import atomic_path, numpy_to_arrow

    table = tensor.float().numpy()
    flat = numpy_to_arrow(np.ascontiguousarray(table).reshape(-1))
    emb = pa.FixedSizeListArray.from_arrays(flat, table.shape[1])
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"id": numpy_to_arrow(ids), "embedding": emb}), tmp)
    return len(ids)


def _write_json(path: Path, obj: dict) -> None:
    from recsys.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
