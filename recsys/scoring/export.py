"""Export a run's user and item embeddings, with external IDs, for ANN serving systems (e.g. faiss)."""

from __future__ import annotations

import json
from pathlib import Path

from recsys.errors import RunDirError


def export_run(run_dir: str | Path, out: str | Path) -> dict:
    """Write ``users.parquet`` and ``items.parquet`` (``id``, ``embedding``) plus ``scorer.json``.

    The vectors are the scorer-prepared tables (e.g. L2-normalised, query divided by τ for cosine scorers), so the
    exported score is always the plain inner product ``user · item``: an inner-product index (faiss
    ``IndexFlatIP`` or any MIPS index) reproduces ``recsys score`` exactly.

    Args:
        run_dir: a finished ``recsys fit`` run whose model is an embedding model.
        out: the output directory (files are replaced atomically).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.io_utils import atomic_path, atomic_write_text, numpy_to_arrow
    from recsys.runs import Run

    run = Run.open(run_dir)
    payload = run.payload
    if payload.tables is None:
        raise RunDirError(f"the model in {str(run.path)!r} is not an embedding model (no user/item tables to export)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    for side, tensor in (("user", payload.queries), ("item", payload.items)):
        vocab = run.vocab(side)
        table = tensor.float().numpy()
        flat = numpy_to_arrow(np.ascontiguousarray(table).reshape(-1))
        emb = pa.FixedSizeListArray.from_arrays(flat, table.shape[1])
        with atomic_path(out / f"{side}s.parquet") as tmp:
            pq.write_table(pa.table({"id": numpy_to_arrow(vocab.ids), "embedding": emb}), tmp)
        info[f"n_{side}s"] = len(vocab)
        info["dim"] = int(table.shape[1])
    desc = {"metric": "inner_product", "prepared": True, "dim": info["dim"], "trained_scorer": payload.scorer,
            "note": "vectors are already transformed by the scorer; score = users.embedding · items.embedding"}
    atomic_write_text(out / "scorer.json", json.dumps(desc, indent=2) + "\n")
    return info
