"""Batch top-k scoring of a finished run into Parquet, streamed chunk by chunk and written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recsys.errors import DataError, ServingError

if TYPE_CHECKING:
    from recsys.scoring.index import IndexSpec


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


def _score_fn_for_run(run, index: IndexSpec | None = None, gallery: Path | None = None, exclude=None,
                      extra_items=None):
    """The cheapest score function for a run: its stored GEMM-ready tables, else the rebuilt model.

    Args:
        run: the :class:`recsys.runs.Run` being scored.
        index: the item index to serve through, built over the stored tables and extras; exact when None.
        gallery: another run whose stored item table the queries are scored against (their first ``D_gallery``
            coordinates: a backward-compatible model's new queries against the old model's items).
        exclude: CSR of items a shortlisting index must not take.
        extra_items: scorer-prepared rows appended to the item table (items unseen in training).

    Raises:
        ServingError: an index, gallery or new items on a run that stores no embedding tables.

    Shapes:
        extra_items: [M, D]
    """
    from recsys.recommender import table_score_fn
    from recsys.runs import Run
    from recsys.scoring.index import ExactSpec

    payload = run.payload
    if payload.tables is not None:
        gallery_items = None if gallery is None else Run.open(gallery).item_table_for(run.vocab("item"))
        return table_score_fn(*payload.tables, normalize=bool(payload.scorer.get("normalize", False)),
                              index=index, extras=payload.extras, gallery=gallery_items, extra_items=extra_items,
                              exclude=exclude)
    if not (index is None or isinstance(index, ExactSpec)) or gallery is not None or extra_items is not None:
        what = ("new items" if extra_items is not None else "a gallery" if gallery is not None
                else f"index '{index.kind}'")
        raise ServingError(f"{what} needs a run with stored embedding tables; this model scores items directly")
    return run.recommender().score_fn(run.data(), up_to="all")


def score_run(run_dir: str | Path, out: str | Path, *, k: int = 100, users_file: str | Path | None = None,
              keep_seen: bool = False, chunk_size: int | None = None, shard_users: int | None = None,
              num_shards: int = 1, shard_index: int = 0, index: IndexSpec | None = None,
              gallery: str | Path | None = None, explain: bool = False, precision: str = "32",
              new_items: str | Path | None = None) -> int:
    """Write the top-k items of every user (or of the listed users) of a run to Parquet.

    Columns: ``user`` and ``item`` (external IDs), ``rank`` (1-based), ``score``. Items a user interacted with in
    training are excluded unless ``keep_seen``. Returns the number of rows written by this call.

    With ``shard_users`` (or ``num_shards > 1``) ``out`` is a directory of ``part-NNNNN.parquet`` shards, each
    written atomically with a ``.json`` sidecar (rows, users, sha256) and a ``manifest.json`` over all shards. A
    rerun verifies existing shards against their sidecars, skips the complete ones and rewrites missing, truncated
    or corrupted ones, so a killed job resumes to byte-identical output. ``num_shards`` / ``shard_index`` let an
    external scheduler split the shards between workers (shard i goes to worker ``i % num_shards``).

    Args:
        run_dir: a finished ``recsys fit`` run.
        out: the Parquet file (or, when sharded, the directory) to write.
        k: list length.
        users_file: external user IDs to score (all users when None).
        keep_seen: keep training items in the lists.
        chunk_size: users per GEMM chunk (from a memory budget when None).
        shard_users: users per shard; enables sharded output.
        num_shards: workers sharing the job.
        shard_index: this worker's index in ``0..num_shards-1``.
        index: the item index to rank through (:func:`recsys.scoring.index.parse_index_spec`: a prefix,
            coarse-to-fine, Hamming codes, low rank, quantized codes, Seismic, faiss); exact brute force when None.
        gallery: a run whose items to score this run's queries against (new queries vs the old gallery).
        explain: add an ``explanation`` column: the top-3 concepts of each score and their shares (explicit-concept
            models such as SESA only).
        precision: score dtype, ``32`` or ``bf16`` (bf16 shortlist + float32 re-rank, see
            :mod:`recsys.scoring.topk`); ``auto`` is float32 on this CPU path.
        new_items: a side table (CSV/Parquet: an ``item`` column plus the training item attributes) of items
            unseen in training, embedded from their text and ranked with the catalogue (text encoders only); any
            index over plain tables applies (not ``lowrank`` or ``quantized``, whose tables cover trained items).

    Raises:
        ServingError: new items or explanations with a gallery (another item table), or an index that does not
            fit the run (see :func:`recsys.recommender.table_score_fn`).
    """
    if gallery is not None and (new_items is not None or explain):
        raise ServingError("a gallery cannot be combined with new items or explanations (they describe this "
                           "run's own item table)")
    if new_items is not None and explain:
        raise ServingError("new items cannot be explained (explanations use the run's stored concept tables)")
    job = _ScoringJob(run_dir, k, users_file, keep_seen, chunk_size, index, gallery, new_items)
    if precision != "32":
        from recsys.scoring.topk import scoring_dtype

        job.dtype = scoring_dtype(precision, "cpu")
    if explain:
        from recsys.scoring.explain import attach_explicit

        attach_explicit(job)
    if shard_users is None and num_shards == 1:
        return job.write(Path(out), job.rows)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    per = shard_users or -(-len(job.rows) // num_shards)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".part-*.tmp"):
        # Temp files of a killed run (a shard only becomes visible by an atomic rename). With several workers
        # another one may be writing, so only a single-worker job cleans up.
        if num_shards == 1:
            stale.unlink(missing_ok=True)
    n = 0
    parts = range(0, max(1, -(-len(job.rows) // per)))
    for p in parts:
        if p % num_shards != shard_index:
            continue
        path = out / f"part-{p:05d}.parquet"
        rows = job.rows[p * per:(p + 1) * per]
        if _shard_is_complete(path, len(rows)):
            continue
        written = job.write(path, rows)
        _write_sidecar(path, written, rows)
        n += written
    _write_manifest(out, len(parts), k)
    return n


class _ScoringJob:
    """Everything a scoring pass needs, loaded once: vocabularies, exclusions, the score function."""

    #: set by :func:`recsys.scoring.explain.attach_explicit`: the explanation column.
    explainer = None
    #: the score dtype of the top-k pass (float32 when None); see :func:`recsys.scoring.topk.iter_topk`.
    dtype = None

    def __init__(self, run_dir, k, users_file, keep_seen, chunk_size, index=None, gallery=None,
                 new_items=None) -> None:
        import pyarrow as pa

        from recsys.data.vocab import Vocabulary
        from recsys.runs import Run
        from recsys.scoring.topk import RowSets

        #: the run, read once: its payload, vocabularies and split are cached on it.
        self.run = run = Run.open(run_dir)
        self.user_vocab = run.vocab("user")
        self.item_vocab = run.vocab("item")
        if users_file is not None:
            self.rows = self.user_vocab.encode(read_user_ids(users_file), source=str(users_file))
        else:
            self.rows = np.arange(len(self.user_vocab))
        self.exclude = None
        if not keep_seen:
            self.exclude = RowSets.from_pairs(*run.train_pairs(), len(self.user_vocab))
        extra = None
        if new_items is not None:
            from recsys.scoring.new_items import new_item_tables

            new_ids, extra = new_item_tables(run, new_items)
            # New rows go after the trained ones: trained item rows (and the exclusions) keep their numbers.
            self.item_vocab = Vocabulary(np.concatenate([self.item_vocab.ids, new_ids]), "item")
        self.score_fn = _score_fn_for_run(run, index, None if gallery is None else Path(gallery), self.exclude,
                                          extra)
        self.k, self.chunk_size = k, chunk_size
        self.schema = pa.schema([("user", _arrow_type(self.user_vocab)), ("item", _arrow_type(self.item_vocab)),
                                 ("rank", pa.int32()), ("score", pa.float32())])

    def write(self, path: Path, rows: np.ndarray, chunks=None) -> int:
        """Stream the top-k of ``rows`` (scored here, or given as ``chunks``) into one Parquet file, atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from recsys.io_utils import atomic_path, numpy_to_arrow
        from recsys.scoring.topk import iter_topk

        k, n = self.k, 0
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, self.schema) as writer:
            topk_chunks = chunks if chunks is not None else iter_topk(
                self.score_fn, rows, len(self.item_vocab), k, self.exclude, self.chunk_size, dtype=self.dtype)
            for urows, idx, vals in topk_chunks:
                idx, vals = idx.numpy(), vals.numpy()
                keep = idx >= 0
                u = np.broadcast_to(urows[:, None], idx.shape)[keep]
                ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), idx.shape)[keep]
                cols = [self.user_vocab.decode(u), self.item_vocab.decode(idx[keep]), ranks,
                        vals[keep].astype(np.float32)]
                arrays = [numpy_to_arrow(c) for c in cols]
                if self.explainer is not None:
                    arrays.append(self.explainer.column(u, idx[keep]))
                writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
                n += len(u)
        return n


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_sidecar(path: Path, rows_written: int, users: np.ndarray) -> None:
    import json

    from recsys.io_utils import atomic_write_text

    meta = {"file": path.name, "rows": rows_written, "users": len(users), "sha256": _sha256(path)}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, sort_keys=True) + "\n")


def _shard_is_complete(path: Path, n_users: int) -> bool:
    """A shard counts as done only if its file exists, matches its sidecar's checksum and covers its users."""
    import json

    side = path.with_suffix(".json")
    if not (path.exists() and side.exists()):
        return False
    try:
        meta = json.loads(side.read_text())
    except ValueError:
        return False
    return meta.get("users") == n_users and meta.get("sha256") == _sha256(path)


def _write_manifest(out: Path, n_parts: int, k: int) -> None:
    """``manifest.json`` over the shards present so far: rows, checksums, and whether the job is complete."""
    import json

    from recsys.io_utils import atomic_write_text

    shards = []
    for p in range(n_parts):
        side = out / f"part-{p:05d}.json"
        if side.exists():
            shards.append(json.loads(side.read_text()))
    manifest = {"k": k, "n_shards": n_parts, "complete": len(shards) == n_parts,
                "rows": sum(s["rows"] for s in shards), "shards": shards}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _arrow_type(vocab):
    import pyarrow as pa

    return pa.string() if vocab.ids.dtype == object else pa.from_numpy_dtype(vocab.ids.dtype)
