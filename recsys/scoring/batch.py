"""Batch top-k scoring of a finished run into Parquet, streamed chunk by chunk and written atomically."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from recsys.errors import DataError, ServingError

if TYPE_CHECKING:
    from recsys.scoring.index import IndexSpec


#: header names of the user column in a --users file (compared lower-case).
USER_HEADERS = ("user", "userid", "user_id")


def read_user_ids(path: str | Path) -> np.ndarray:
    """External user IDs from a text file (one per line), a CSV/TSV with a ``user`` column, or Parquet.

    A first line naming a user column (``user``, ``userId``, ``user_id``) is a header; when it has further
    comma-, tab- or semicolon-separated columns (``user,segment``) the file is read as CSV and only the user
    column is taken. Leading and trailing spaces of IDs are dropped.

    Args:
        path: the file.

    Raises:
        DataError: a missing or unreadable file, no user column, an empty ID or a short CSV row (file, column and
            0-based data row named).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("users file not found", file=str(path))
    if not path.is_file():
        raise DataError("users file is not a regular file", file=str(path))
    if path.suffix == ".parquet":
        return _read_parquet_users(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"users file is not UTF-8 text (byte {e.start})", file=str(path)) from None
    lines = text.splitlines()
    if not lines:
        raise DataError("no user IDs in file", file=str(path))
    first = lines[0].strip()
    for sep in (",", "\t", ";"):
        names = [f.strip().strip('"').lower() for f in first.split(sep)]
        if len(names) > 1 and any(n in USER_HEADERS for n in names):
            return _read_csv_users(path, lines, sep, next(i for i, n in enumerate(names) if n in USER_HEADERS))
    if first.lower() in USER_HEADERS:
        lines = lines[1:]
    ids = [ln.strip() for ln in lines]
    for i, ln in enumerate(ids):
        if not ln:
            raise DataError("empty user ID", file=str(path), column="user", row=i)
    if not ids:
        raise DataError("no user IDs in file", file=str(path))
    return np.asarray(ids, dtype=object)


def _read_csv_users(path: Path, lines: list[str], sep: str, col: int) -> np.ndarray:
    """The user column of a delimited --users file whose header is ``lines[0]``."""
    import csv

    ids = []
    for i, row in enumerate(csv.reader(lines[1:], delimiter=sep)):
        value = row[col].strip() if col < len(row) else ""
        if not value:
            what = ("empty user ID" if col < len(row)
                    else f"row has {len(row)} fields, the user column is field {col + 1}")
            raise DataError(what, file=str(path), column="user", row=i)
        ids.append(value)
    if not ids:
        raise DataError("no user IDs in file", file=str(path))
    return np.asarray(ids, dtype=object)


def _read_parquet_users(path: Path) -> np.ndarray:
    """The ``user`` column (or the only column) of a Parquet --users file."""
    import pyarrow.parquet as pq

    try:
        t = pq.ParquetFile(path).read()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"users file is not a readable Parquet file ({' '.join(str(e).split())[:160]})",
                        file=str(path)) from None
    lower = [c.lower() for c in t.column_names]
    match = [i for i, c in enumerate(lower) if c in USER_HEADERS]
    if not match and t.num_columns != 1:
        raise DataError(f"no user column (one of {', '.join(USER_HEADERS)}) among {t.column_names}", file=str(path))
    name = t.column_names[match[0] if match else 0]
    values = t.column(name).to_pylist()
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise DataError("empty user ID", file=str(path), column=name, row=i)
    if not values:
        raise DataError("no user IDs in file", file=str(path))
    return np.asarray([v.strip() if isinstance(v, str) else v for v in values], dtype=object)


#: what ``recsys score --exclude`` removes from a user's list: every known interaction of the user in the run's data
#: (``all``: train, valid and test, plus a --histories file's items), the training ones only (``train``, the
#: earlier default) or nothing (``none``).
EXCLUDE_CHOICES = ("all", "train", "none")
#: what ``recsys score --unknown-users`` does with requested user IDs that are in neither the run nor --histories.
UNKNOWN_USERS_CHOICES = ("error", "skip", "popular")


@dataclass
class ScoringReport:
    """What one scoring call did, for the command's summary lines.

    Args:
        rows: rows written by this call.
        users: users written by this call.
        checked: output rows checked against the users' known interactions (train, valid and test of the run and
            the --histories items), whatever ``exclude`` was.
        consumed: of those, items the user had already interacted with (0 under ``exclude="all"``).
        exclude: the exclusion mode.
        unknown_skipped: requested users in neither the run nor the histories, left out (``skip``).
        unknown_popular: such users given the most-popular list (``popular``).
        history_users: users scored from --histories.
        history_rows: data rows of the histories file.
        unknown_items: histories rows dropped because their item is not in the run's catalogue.
        first_unknown_item: the first such item ID.
        empty_histories: histories users left with no known item (scored as if they had no history row).
        duplicate_users: --users rows naming a user already listed (each user is scored once).
        first_duplicate: the first such ID and its 0-based data row.
        k_requested: the ``k`` asked for, when it exceeded the catalogue (the lists are then catalogue-long).
        n_items: the catalogue size ``k`` was clamped to.
        shards_written, shards_kept: sharded output: shards (re)written by this call, complete ones kept.
        shards_removed: shards of an earlier layout (more shards than this job's) removed.
    """

    rows: int = 0
    users: int = 0
    checked: int = 0
    consumed: int = 0
    exclude: str = "all"
    unknown_skipped: int = 0
    unknown_popular: int = 0
    history_users: int = 0
    history_rows: int = 0
    unknown_items: int = 0
    first_unknown_item: object = None
    empty_histories: int = 0
    duplicate_users: int = 0
    first_duplicate: tuple | None = None
    k_requested: int | None = None
    n_items: int = 0
    shards_written: int = 0
    shards_kept: int = 0
    shards_removed: int = 0

    def lines(self) -> list[str]:
        """The summary lines ``recsys score`` prints (after the rows-written line)."""
        out = []
        if self.k_requested is not None:
            out.append(f"--k {self.k_requested} is more than the catalogue's {self.n_items} items: each list holds at "
                       f"most {self.n_items} items (fewer once known items are excluded)")
        if self.duplicate_users:
            uid, row = self.first_duplicate
            out.append(f"--users: {self.duplicate_users} duplicate rows ignored, each user is scored once (first: "
                       f"{uid!r} at row {row})")
        if self.shards_written or self.shards_kept or self.shards_removed:
            line = (f"shards: {self.shards_written} written, {self.shards_kept} complete ones kept (same "
                    "fingerprint)")
            if self.shards_removed:
                line += f", {self.shards_removed} files of an earlier layout removed"
            out.append(line)
        if self.history_rows:
            line = f"--histories: {self.history_users} users scored from {self.history_rows} rows"
            if self.unknown_items:
                line += (f"; {self.unknown_items} rows dropped, their item is not in the run's catalogue (first: "
                         f"{self.first_unknown_item!r})")
            if self.empty_histories:
                line += f"; {self.empty_histories} users had no known item left (scored as without a history)"
            out.append(line)
        if self.unknown_skipped:
            out.append(f"--unknown-users skip: {self.unknown_skipped} unknown user IDs skipped")
        if self.unknown_popular:
            out.append(f"--unknown-users popular: {self.unknown_popular} unknown user IDs given the most-popular "
                       "training items")
        known = "train+valid+test interactions" + (" and --histories items" if self.history_rows else "")
        out.append(f"{self.consumed} already-consumed items in the output (--exclude {self.exclude}; {self.checked} "
                   f"rows checked against the users' {known})")
        return out


def _score_fn_for_run(run, index: IndexSpec | None = None, gallery: Path | None = None, exclude=None,
                      extra_items=None, extra_queries=None, model=None):
    """The cheapest score function for a run: its stored GEMM-ready tables, else the rebuilt model.

    Args:
        run: the :class:`recsys.runs.Run` being scored.
        index: the item index to serve through, built over the stored tables and extras; exact when None.
        gallery: another run whose stored item table the queries are scored against (their first ``D_gallery``
            coordinates: a backward-compatible model's new queries against the old model's items).
        exclude: CSR of items a shortlisting index must not take.
        extra_items: scorer-prepared rows appended to the item table (items unseen in training).
        extra_queries: scorer-prepared rows appended to the query table (users folded in from histories).
        model: the run's model when already rebuilt (a model without tables then scores with it).

    Raises:
        ServingError: an index, gallery or new items on a run that stores no embedding tables.

    Shapes:
        extra_items: [M, D]; extra_queries: [H, D]
    """
    from recsys.recommender import table_score_fn
    from recsys.runs import Run
    from recsys.scoring.index import ExactSpec

    payload = run.checked_payload()
    if payload.tables is not None:
        gallery_items = None if gallery is None else Run.open(gallery).item_table_for(run.vocab("item"))
        return table_score_fn(*payload.tables, normalize=bool(payload.scorer.get("normalize", False)),
                              index=index, extras=payload.extras, gallery=gallery_items, extra_items=extra_items,
                              exclude=exclude, extra_queries=extra_queries)
    if (not (index is None or isinstance(index, ExactSpec)) or gallery is not None or extra_items is not None
            or extra_queries is not None):
        what = ("new items" if extra_items is not None else "a gallery" if gallery is not None
                else "folded-in users" if extra_queries is not None else f"index '{index.kind}'")
        raise ServingError(f"{what} needs a run with stored embedding tables; this model scores items directly")
    return (run.recommender() if model is None else model).score_fn(run.data(), up_to="all")


def score_run(run_dir: str | Path, out: str | Path, *, k: int = 100, users_file: str | Path | None = None,
              exclude: str = "all", chunk_size: int | None = None, shard_users: int | None = None,
              num_shards: int = 1, shard_index: int = 0, index: IndexSpec | None = None,
              gallery: str | Path | None = None, explain: bool = False, precision: str = "32",
              new_items: str | Path | None = None, unknown_users: str = "error", histories: str | Path | None = None,
              keep_seen: bool = False) -> int:
    """Write the top-k items of every user (or of the listed users) of a run to Parquet; the number of rows written.

    :func:`run_scoring` with the same arguments, returning only ``report.rows``.
    """
    return run_scoring(run_dir, out, k=k, users_file=users_file, exclude=exclude, chunk_size=chunk_size,
                       shard_users=shard_users, num_shards=num_shards, shard_index=shard_index, index=index,
                       gallery=gallery, explain=explain, precision=precision, new_items=new_items,
                       unknown_users=unknown_users, histories=histories, keep_seen=keep_seen).rows


def run_scoring(run_dir: str | Path, out: str | Path, *, k: int = 100, users_file: str | Path | None = None,
                exclude: str = "all", chunk_size: int | None = None, shard_users: int | None = None,
                num_shards: int = 1, shard_index: int = 0, index: IndexSpec | None = None,
                gallery: str | Path | None = None, explain: bool = False, precision: str = "32",
                new_items: str | Path | None = None, unknown_users: str = "error",
                histories: str | Path | None = None, keep_seen: bool = False) -> ScoringReport:
    """Write the top-k items of every user (or of the listed users) of a run to Parquet, and report what it did.

    Columns: ``user`` and ``item`` (external IDs), ``rank`` (1-based), ``score``. Every item a user is known to
    have interacted with (train, valid and test of the run) is excluded by default (``exclude``); each written row
    is checked against those interactions and the count of already-consumed items found is reported.

    With ``shard_users`` (or ``num_shards > 1``) ``out`` is a directory of ``part-NNNNN.parquet`` shards, each
    written atomically with a ``.json`` sidecar (rows, users, sha256 and the job's fingerprint, see
    :class:`ShardSet`) and a ``manifest.json`` over all shards that records every fingerprint field. A rerun
    verifies existing shards against their sidecars, skips the complete ones of the same fingerprint and rewrites
    missing, truncated, corrupted or stale ones (another model, k, exclusion, index, user subset, precision, ...),
    so a killed job resumes to byte-identical output and a changed job never keeps old lists. ``k`` above the
    catalogue size is clamped to it (reported). ``out`` is refused before any work when it is a device, FIFO or
    directory (a regular file, for shards), lies inside a run directory or is an input file. ``num_shards`` /
    ``shard_index`` let an external scheduler split the shards between workers (shard i goes to worker
    ``i % num_shards``).

    Args:
        run_dir: a finished ``recsys fit`` run.
        out: the Parquet file (or, when sharded, the directory) to write.
        k: list length (at least 1; clamped to the catalogue size).
        users_file: external user IDs to score (all users of the run, or of ``histories``, when None); repeated
            IDs are scored once and counted.
        exclude: ``all`` (every known interaction of the user: train + valid + test, and the histories' items),
            ``train`` (training interactions and the histories' items) or ``none`` (keep everything).
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
        unknown_users: requested user IDs in neither the run nor ``histories``: ``error`` (one line naming the
            file, the count and the first IDs), ``skip`` (left out, counted) or ``popular`` (the most-popular
            training items, counted).
        histories: a CSV/Parquet file of ``user,item`` pairs (optional ``timestamp``; external IDs; the users may be
            new): its users are scored from these items by the model's fold-in (:mod:`recsys.scoring.fold_in`).
            A user who is also in the run is scored from the file (the histories take precedence); the run's
            interactions of that user are still excluded according to ``exclude``. Items outside the catalogue are
            dropped and counted.
        keep_seen: deprecated alias of ``exclude="none"``.

    Raises:
        UsageError: a non-positive ``k``, chunk size, shard size or worker count, a shard index out of range, or an
            output target that must not be replaced (:func:`recsys.io_utils.check_output_path`).
        CheckpointError: ``model.pt`` is damaged or its tables do not fit the run (:meth:`Run.checked_payload`).
        DataError: unknown user IDs under ``unknown_users="error"``, or a bad histories or users file.
        ServingError: new items or explanations with a gallery (another item table), explanations with histories
            or popular fallbacks, a model that cannot score histories, or an index that does not fit the run (see
            :func:`recsys.recommender.table_score_fn`).
    """
    _check_options(k=k, chunk_size=chunk_size, shard_users=shard_users, num_shards=num_shards,
                   shard_index=shard_index, exclude=exclude, unknown_users=unknown_users, precision=precision)
    if gallery is not None and (new_items is not None or explain):
        raise ServingError("a gallery cannot be combined with new items or explanations (they describe this "
                           "run's own item table)")
    if new_items is not None and explain:
        raise ServingError("new items cannot be explained (explanations use the run's stored concept tables)")
    if explain and (histories is not None or unknown_users == "popular"):
        raise ServingError("--explain explains the run's stored user vectors: it cannot be combined with "
                           "--histories or --unknown-users popular")
    from recsys.io_utils import check_output_path

    sharded = shard_users is not None or num_shards > 1
    # Before anything is read: a device, a FIFO, a run's own files or an input file is never replaced.
    out = check_output_path(out, directory=sharded, inputs={"--users": users_file, "--histories": histories,
                                                           "--new-items": new_items})
    job = _ScoringJob(run_dir, k, users_file, _exclude_mode(exclude, keep_seen), chunk_size, index, gallery,
                      new_items, unknown_users, histories)
    if precision != "32":
        from recsys.scoring.topk import scoring_dtype

        job.dtype = scoring_dtype(precision, "cpu")
    if explain:
        from recsys.scoring.explain import attach_explicit

        attach_explicit(job)
    from recsys.progress import progress

    if not sharded:
        with progress(len(job.rows), "scoring users", "users") as job.bar:
            job.report.rows = job.write(out, job.rows)
        return job.report
    per = shard_users or -(-len(job.rows) // num_shards)
    fields = job.fingerprint(index=index, gallery=gallery, explain=explain, new_items=new_items,
                             users_file=users_file, histories=histories, shard_users=per)
    shards = ShardSet(out, job.rows, per, fields, job.report)
    # Temp files of killed writers are unlocked, so this is safe with several workers writing.
    shards.prepare()
    todo = [p for p in range(shards.n_parts) if p % num_shards == shard_index and not shards.is_complete(p)]
    job.report.shards_kept = sum(1 for p in range(shards.n_parts) if p % num_shards == shard_index) - len(todo)
    with progress(sum(len(shards.users(p)) for p in todo), "scoring users", "users") as job.bar:
        for p in todo:
            rows = shards.users(p)
            written = job.write(shards.path(p), rows, sweep=False)
            shards.write_sidecar(p, written)
            job.report.rows += written
            job.report.shards_written += 1
    shards.write_manifest()
    return job.report


def _check_options(*, k, chunk_size=None, shard_users=None, num_shards=1, shard_index=0, exclude="all",
                   unknown_users="error", precision="32") -> None:
    """Refuse option values that cannot describe a scoring job, before anything is read (one line each).

    Raises:
        UsageError: a non-positive ``k``, chunk size, shard size or worker count, a shard index outside
            ``0..num_shards-1``, or an unknown exclusion, unknown-users or precision choice.
    """
    from recsys.errors import UsageError

    for name, value, allow_none in (("--k", k, False), ("--chunk-size", chunk_size, True),
                                    ("--shard-users", shard_users, True), ("--num-shards", num_shards, False)):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) \
            or not 0 <= shard_index < num_shards:
        raise UsageError(f"--shard-index must be in 0..{num_shards - 1} (--num-shards {num_shards}), got "
                         f"{shard_index!r}")
    if exclude not in EXCLUDE_CHOICES:
        raise UsageError(f"--exclude must be one of {', '.join(EXCLUDE_CHOICES)}, not {exclude!r}")
    if unknown_users not in UNKNOWN_USERS_CHOICES:
        raise UsageError(f"--unknown-users must be one of {', '.join(UNKNOWN_USERS_CHOICES)}, not {unknown_users!r}")
    from recsys.scoring.topk import scoring_dtype

    try:
        scoring_dtype(precision, "cpu")
    except ValueError as e:
        raise UsageError(f"--precision: {e}") from None


def _exclude_mode(exclude: str, keep_seen: bool) -> str:
    from recsys.errors import UsageError

    if exclude not in EXCLUDE_CHOICES:
        raise UsageError(f"exclude must be one of {', '.join(EXCLUDE_CHOICES)}, not {exclude!r}")
    if keep_seen and exclude not in ("all", "none"):
        raise UsageError(f"keep_seen (the deprecated alias of exclude='none') contradicts exclude={exclude!r}")
    return "none" if keep_seen else exclude


class _ScoringJob:
    """Everything a scoring pass needs, loaded once: the users to score, exclusions, the score function.

    Users are numbered by *virtual rows*: ``0..U-1`` the run's users, ``U..U+H-1`` the users of a histories file
    (scored from it), ``U+H..`` unknown users given the most-popular list; :attr:`user_ids` decodes all of them.

    Args:
        run_dir: the run.
        k: list length.
        users_file: external user IDs to score (None: every run user, or every histories user when given).
        exclude: one of :data:`EXCLUDE_CHOICES`.
        chunk_size: users per GEMM chunk.
        index, gallery, new_items: see :func:`run_scoring`.
        unknown_users: one of :data:`UNKNOWN_USERS_CHOICES`.
        histories: a histories file (see :func:`run_scoring`).
    """

    #: set by :func:`recsys.scoring.explain.attach_explicit`: the explanation column.
    explainer = None
    #: the score dtype of the top-k pass (float32 when None); see :func:`recsys.scoring.topk.iter_topk`.
    dtype = None
    #: the progress counter :meth:`write` advances (set by :func:`run_scoring`), or None.
    bar = None

    def __init__(self, run_dir, k, users_file, exclude="all", chunk_size=None, index=None, gallery=None,
                 new_items=None, unknown_users="error", histories=None) -> None:
        import pyarrow as pa

        from recsys.data.vocab import Vocabulary
        from recsys.runs import Run

        if unknown_users not in UNKNOWN_USERS_CHOICES:
            from recsys.errors import UsageError

            raise UsageError(f"unknown_users must be one of {', '.join(UNKNOWN_USERS_CHOICES)}, not "
                             f"{unknown_users!r}")
        #: the run, read once: its payload, vocabularies and split are cached on it.
        self.run = run = Run.open(run_dir)
        # model.pt is checked against the vocabularies before anything is scored.
        run.checked_payload()
        self.unknown_users = unknown_users
        self.report = ScoringReport(exclude=exclude)
        self.user_vocab = run.vocab("user")
        self.item_vocab = trained_items = run.vocab("item")
        self.k, self.chunk_size = k, chunk_size
        n_known = len(self.user_vocab)
        hist = None
        if histories is not None:
            from recsys.scoring.fold_in import check_scores_histories, read_histories

            model = run.recommender()
            check_scores_histories(model)  # before the file is read: a model that cannot is refused in one line
            hist = read_histories(histories, self.user_vocab, trained_items)
            r = self.report
            r.history_users, r.history_rows = len(hist.ids), hist.n_rows
            r.unknown_items, r.first_unknown_item, r.empty_histories = (hist.unknown_items, hist.first_unknown_item,
                                                                         len(hist.empty_ids))
        n_hist = 0 if hist is None else len(hist.ids)
        #: virtual rows below this are scored by the score function; the rest get the most-popular list.
        self.n_scored = n_known + n_hist
        popular_ids = self._resolve_rows(users_file, hist, unknown_users)
        self.user_ids = self.user_vocab.ids if hist is None and not len(popular_ids) else \
            np.concatenate([self.user_vocab.ids, hist.ids if hist is not None else self.user_vocab.ids[:0],
                            popular_ids]).astype(self.user_vocab.ids.dtype)
        extra = None
        if new_items is not None:
            from recsys.scoring.new_items import new_item_tables

            new_ids, extra = new_item_tables(run, new_items)
            # New rows go after the trained ones: trained item rows (and the exclusions) keep their numbers.
            self.item_vocab = Vocabulary(np.concatenate([self.item_vocab.ids, new_ids]), "item")
        n_items = len(self.item_vocab)
        if n_items and self.k > n_items:
            # Lists longer than the catalogue would only be padding (and k = 10**9 would allocate it): clamp, say so.
            self.report.k_requested, self.report.n_items = self.k, n_items
            self.k = n_items
        self.exclude, self.known = self._exclusions(exclude, hist)  # keys over the full (extended) catalogue
        self.popular = self._popular() if len(popular_ids) else None
        gallery = None if gallery is None else Path(gallery)
        extra_queries = None
        folded = hist is not None and len(hist.ids) > 0
        if folded:
            from recsys.scoring.fold_in import fold_in_queries, history_scorer

            extra_queries = fold_in_queries(model, hist.histories)
        self.score_fn = _score_fn_for_run(run, index, gallery, self.exclude, extra, extra_queries,
                                          model if folded else None)
        if folded and extra_queries is None:
            self.score_fn = history_scorer(model, self.score_fn, hist.histories, n_known, len(self.item_vocab))
        #: the GEMM-ready tables over every scored virtual row (stored queries + folded-in ones), or None.
        self.tables = None
        if run.payload.tables is not None:
            q, i = run.payload.tables
            self.tables = (q if extra_queries is None else torch.cat([q, extra_queries.to(q.dtype)]),
                           i if extra is None else torch.cat([i, extra.to(i.dtype)]))
        self.schema = pa.schema([("user", _arrow_type(self.user_vocab)), ("item", _arrow_type(self.item_vocab)),
                                 ("rank", pa.int32()), ("score", pa.float32())])

    # ------------------------------------------------------------------------------------------ set-up
    def _resolve_rows(self, users_file, hist, unknown_users: str) -> np.ndarray:
        """Set :attr:`rows` (virtual rows, in request order) and return the external IDs of popular-list users."""
        from recsys.scoring.fold_in import to_id_type

        n_known = len(self.user_vocab)
        if users_file is None and hist is None:
            self.rows = np.arange(n_known)
            return self.user_vocab.ids[:0]
        if users_file is not None:
            raw, source = read_user_ids(users_file), str(users_file)
            file_rows = np.arange(len(raw))
        else:  # every user of the histories file, in ID order
            raw, file_rows = hist.all_ids()
            source = hist.source
        ids, ok = to_id_type(raw, self.user_vocab.ids.dtype)
        if users_file is not None:
            raw, ids, ok, file_rows = self._drop_duplicates(raw, ids, ok, file_rows)
        rows = np.full(len(ids), -1, dtype=np.int64)
        if hist is not None and len(hist.ids):
            # Histories take precedence over the run's own user vector.
            from recsys.data.vocab import Vocabulary

            h = Vocabulary(hist.ids, "user").encode(ids, missing="ignore")
            rows = np.where(ok & (h >= 0), n_known + h, rows)
        if n_known:
            v = self.user_vocab.encode(ids, missing="ignore")
            rows = np.where(ok & (rows < 0) & (v >= 0), v, rows)
        unknown = rows < 0
        n_unknown = int(unknown.sum())
        if n_unknown and unknown_users == "error":
            first = np.flatnonzero(unknown)
            shown = ", ".join(repr(_plain(raw[i])) for i in first[:5]) + (", ..." if n_unknown > 5 else "")
            where = "in the run's user vocabulary" + (" nor in --histories" if hist is not None else "")
            fix = "pass --unknown-users skip or popular" + ("" if hist is not None else ", or --histories")
            n_mistyped = int((unknown & ~ok).sum())
            # "abc" against integer IDs cannot be any user of the run: say so, not only that it is unknown.
            typed = (f"; {n_mistyped} of them are not {self.user_vocab.ids.dtype} IDs like the run's"
                     if n_mistyped else "")
            raise DataError(f"unknown user IDs: {n_unknown} of {len(raw)} are not {where} (first: {shown}){typed}; "
                            f"{fix}", file=source, column="user", row=int(file_rows[first[0]]))
        if n_unknown and unknown_users == "skip":
            self.report.unknown_skipped = n_unknown
            self.rows = rows[~unknown]
            return self.user_vocab.ids[:0]
        if n_unknown:
            bad = np.flatnonzero(unknown & ~ok)
            if len(bad):
                raise DataError(f"user ID {_plain(raw[bad[0]])!r} is not of the run's user ID type "
                                f"({self.user_vocab.ids.dtype}), so it cannot be written with the run's users",
                                file=source, column="user", row=int(file_rows[bad[0]]))
            self.report.unknown_popular = n_unknown
            rows[unknown] = self.n_scored + np.arange(n_unknown)
        self.rows = rows
        return ids[unknown]

    def _drop_duplicates(self, raw, ids, ok, file_rows):
        """The --users rows without repeats of an earlier row (``"7"`` and ``"07"`` are one integer user), counted.

        Shapes:
            raw, ids, ok, file_rows: [N] -> each [M], M <= N, in file order
        """
        keep = np.zeros(len(ids), dtype=bool)
        for sel, keys in ((np.flatnonzero(ok), ids[ok]), (np.flatnonzero(~ok), raw[~ok].astype(str))):
            if len(sel):
                _, first = np.unique(keys, return_index=True)
                keep[sel[first]] = True
        if keep.all():
            return raw, ids, ok, file_rows
        dup = int(np.flatnonzero(~keep)[0])
        self.report.duplicate_users = int((~keep).sum())
        self.report.first_duplicate = (_plain(raw[dup]), int(file_rows[dup]))
        return raw[keep], ids[keep], ok[keep], file_rows[keep]

    def fingerprint(self, *, index=None, gallery=None, explain=False, new_items=None, users_file=None,
                    histories=None, shard_users=None) -> dict:
        """Everything that determines the job's output, as plain JSON data (what shards and manifests record).

        The run by content (``config.yaml``, ``model.pt``, ``data/`` hashes), the gallery run's likewise, ``k``,
        the exclusion and unknown-users policies, the index spec, the users, histories and new-items files (by
        content), the score precision, explanations and the shard layout.

        Args:
            index, gallery, explain, new_items, users_file, histories: as given to :func:`run_scoring`.
            shard_users: users per shard.
        """
        from recsys import __version__
        from recsys.runs import Run, file_sha256

        def content(path):
            return None if path is None else file_sha256(path)

        return {
            "format": 1, "recsys": __version__, "run": self.run.identity(),
            "gallery": None if gallery is None else Run.open(gallery).identity(("item_vocab.parquet",)),
            "k": int(self.k), "exclude": self.report.exclude, "unknown_users": self.unknown_users,
            "index": "exact" if index is None else str(index), "users_sha256": content(users_file),
            "histories_sha256": content(histories), "new_items_sha256": content(new_items),
            "precision": str(self.dtype or torch.float32).removeprefix("torch."), "explain": bool(explain),
            "shard_users": None if shard_users is None else int(shard_users), "n_users": int(len(self.rows)),
        }

    def _exclusions(self, exclude: str, hist):
        """(items never to recommend, items the user is known to have had) over the scored virtual rows.

        Returns a :class:`~recsys.scoring.topk.RowSets` (None under ``none``) and the sorted ``row · n_items +
        item`` keys of every known interaction (train, valid and test of the run, plus the histories) for the
        already-consumed check.
        """
        from recsys.data.splits import TRAIN
        from recsys.scoring.topk import RowSets

        data = self.run.data()
        users, items = data.users, data.items
        n_known = len(self.user_vocab)
        train = data.labels == TRAIN
        if exclude == "none":
            ex_u, ex_i = [], []
        elif exclude == "train":
            ex_u, ex_i = [users[train]], [items[train]]
        else:
            ex_u, ex_i = [users], [items]
        kn_u, kn_i = [users], [items]
        if hist is not None and len(hist.ids):
            h = hist.histories
            h_rows = n_known + np.repeat(np.arange(len(h)), np.diff(h.indptr))
            kn_u.append(h_rows)
            kn_i.append(h.items)
            if exclude != "none":
                ex_u.append(h_rows)
                ex_i.append(h.items)
            # A history user who is also a run user: their run interactions stay known (and excluded as asked).
            v = self.user_vocab.encode(hist.ids, missing="ignore") if n_known else np.full(len(hist.ids), -1)
            if (v >= 0).any():
                both = np.flatnonzero(v >= 0)
                to_hist = np.full(n_known, -1, dtype=np.int64)
                to_hist[v[both]] = n_known + both
                moved = to_hist[users] >= 0
                kn_u.append(to_hist[users[moved]])
                kn_i.append(items[moved])
                if exclude != "none":
                    sel = moved & train if exclude == "train" else moved
                    ex_u.append(to_hist[users[sel]])
                    ex_i.append(items[sel])
        n_rows = self.n_scored
        known = RowSets.from_pairs(np.concatenate(kn_u), np.concatenate(kn_i), n_rows)
        if exclude == "all":  # the same pairs: sort them once
            exclude_sets = known
        else:
            exclude_sets = None if exclude == "none" else RowSets.from_pairs(np.concatenate(ex_u),
                                                                              np.concatenate(ex_i), n_rows)
        # Rows ascending, items sorted within a row: the keys come out sorted, ready for searchsorted.
        n = np.int64(len(self.item_vocab))
        keys = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(known.indptr)) * n + known.indices
        return exclude_sets, keys

    def _popular(self) -> tuple[np.ndarray, np.ndarray]:
        """The top-k most-popular training items (ties by item row) and their training counts, padded with -1."""
        _, items = self.run.train_pairs()
        counts = np.bincount(items, minlength=len(self.item_vocab)).astype(np.float32)
        top = np.argsort(-counts, kind="stable")[:self.k]
        idx = np.full(self.k, -1, dtype=np.int64)
        vals = np.full(self.k, -np.inf, dtype=np.float32)
        idx[:len(top)], vals[:len(top)] = top, counts[top]
        return idx, vals

    # ------------------------------------------------------------------------------------------ scoring
    def topk_chunks(self, rows: np.ndarray, score_fn=None, device="cpu", dtype=None):
        """``(virtual rows, top items, top scores)`` per chunk, in ``rows`` order; popular-list rows merged in.

        Args:
            rows: virtual rows to rank for.
            score_fn: the score function over scored virtual rows (the job's when None).
            device: where scores are computed.
            dtype: the score dtype (see :func:`recsys.scoring.topk.iter_topk`).

        Shapes:
            -> per chunk: rows [B], items [B, k] int64 (CPU), scores [B, k] float32 (CPU)
        """
        from recsys.scoring.topk import iter_topk

        score_fn = self.score_fn if score_fn is None else score_fn
        pop = rows >= self.n_scored
        chunks = iter_topk(score_fn, rows[~pop], len(self.item_vocab), self.k, self.exclude, self.chunk_size,
                           device, dtype)
        if not pop.any():
            for urows, idx, vals in chunks:
                yield urows, idx.cpu(), vals.cpu()
            return
        pop_idx, pop_vals = (torch.from_numpy(a) for a in self.popular)
        at_pop, at_scored = np.flatnonzero(pop), np.flatnonzero(~pop)
        done, taken = 0, 0  # rows positions < done emitted; scored rows consumed
        for urows, idx, vals in chunks:
            pos = at_scored[taken:taken + len(urows)]
            taken += len(urows)
            between = at_pop[(at_pop >= done) & (at_pop < pos[-1])]
            yield self._merge(rows, pos, idx.cpu(), vals.cpu(), between, pop_idx, pop_vals)
            done = pos[-1] + 1
        rest = at_pop[at_pop >= done]
        for s in range(0, len(rest), 4096):
            p = rest[s:s + 4096]
            yield rows[p], pop_idx.expand(len(p), -1), pop_vals.expand(len(p), -1)

    @staticmethod
    def _merge(rows, pos, idx, vals, between, pop_idx, pop_vals):
        """One chunk of scored rows with the popular-list rows that come between them, in request order."""
        order = np.argsort(np.concatenate([pos, between]), kind="stable")
        n = len(between)
        all_idx = torch.cat([idx, pop_idx.expand(n, -1)])[torch.from_numpy(order)]
        all_vals = torch.cat([vals, pop_vals.expand(n, -1)])[torch.from_numpy(order)]
        return rows[np.concatenate([pos, between])[order]], all_idx, all_vals

    def consumed(self, urows: np.ndarray, idx: np.ndarray) -> int:
        """How many of the written items the user is known to have interacted with (a check, not the masking).

        Shapes:
            urows: [B] virtual rows; idx: [B, k] item rows, -1 = none
        """
        keep = (idx >= 0) & (urows[:, None] < self.n_scored)
        if not keep.any() or not len(self.known):
            return 0
        q = np.broadcast_to(urows[:, None], idx.shape)[keep].astype(np.int64) * np.int64(len(self.item_vocab)) \
            + idx[keep]
        at = np.minimum(np.searchsorted(self.known, q), len(self.known) - 1)
        return int((self.known[at] == q).sum())

    def write(self, path: Path, rows: np.ndarray, chunks=None, sweep: bool = True) -> int:
        """Stream the top-k of ``rows`` (scored here, or given as ``chunks``) into one Parquet file, atomically.

        Every chunk is checked against the users' known interactions (:meth:`consumed`) into :attr:`report`.

        Args:
            path: the Parquet file.
            rows: the virtual rows to write.
            chunks: precomputed ``(rows, items, scores)`` chunks (the Lightning path), or None to score here.
            sweep: remove the target's stale temporary files first (see :func:`recsys.io_utils.atomic_path`).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        from recsys.io_utils import atomic_path, numpy_to_arrow

        k, n = self.k, 0
        with atomic_path(path, sweep=sweep) as tmp, pq.ParquetWriter(tmp, self.schema) as writer:
            topk_chunks = chunks if chunks is not None else self.topk_chunks(rows, dtype=self.dtype)
            for urows, idx, vals in topk_chunks:
                idx, vals = idx.numpy(), vals.numpy()
                keep = idx >= 0
                u = np.broadcast_to(urows[:, None], idx.shape)[keep]
                ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), idx.shape)[keep]
                cols = [self.user_ids[u], self.item_vocab.decode(idx[keep]), ranks, vals[keep].astype(np.float32)]
                arrays = [numpy_to_arrow(c) for c in cols]
                if self.explainer is not None:
                    arrays.append(self.explainer.column(u, idx[keep]))
                writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
                n += len(u)
                self.report.checked += int(keep.sum())
                self.report.consumed += self.consumed(urows, idx)
                self.report.users += len(urows)
                if self.bar is not None:
                    self.bar.update(len(urows))
        return n


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


#: shard and sidecar names of a sharded output (``part-00012.parquet`` and ``part-00012.json``).
_SHARD_NAME = re.compile(r"part-(\d{5,})\.(parquet|json)")


class ShardSet:
    """The shards of one sharded scoring job in a directory: which are done, their sidecars, the manifest.

    A shard counts as done only when its file matches its sidecar's checksum, covers its users and its sidecar
    records this job's fingerprint (:meth:`_ScoringJob.fingerprint`): a re-run with another model, ``k``,
    exclusion, index, user subset, precision or layout rewrites every shard instead of keeping stale ones.

    Args:
        out: the output directory.
        rows: the job's virtual user rows, in output order.
        per: users per shard.
        fields: the job's fingerprint fields (recorded in full in ``manifest.json``).
        report: the job's report (counts of removed shards go there), or None.
    """

    def __init__(self, out: Path, rows: np.ndarray, per: int, fields: dict, report: ScoringReport | None = None
                 ) -> None:
        self.out, self.rows, self.per, self.fields = Path(out), rows, int(per), fields
        self.n_parts = max(1, -(-len(rows) // self.per))
        self.fingerprint = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        self.report = report

    def path(self, p: int) -> Path:
        """Shard ``p``'s Parquet file."""
        return self.out / f"part-{p:05d}.parquet"

    def users(self, p: int) -> np.ndarray:
        """The virtual rows shard ``p`` covers."""
        return self.rows[p * self.per:(p + 1) * self.per]

    def prepare(self) -> None:
        """Create the directory; remove killed writers' temp files and shards beyond this layout's count.

        The manifest is rewritten first (complete only if every shard already carries this fingerprint), so a job
        killed while it replaces stale shards never leaves a manifest that vouches for them.
        """
        from recsys.io_utils import remove_stale_temps

        self.out.mkdir(parents=True, exist_ok=True)
        # Unlocked temp files only: a worker writing right now holds its temp file's lock.
        remove_stale_temps(self.out)
        removed = 0
        for entry in list(self.out.iterdir()):
            m = _SHARD_NAME.fullmatch(entry.name)
            if m and int(m.group(1)) >= self.n_parts and entry.is_file():
                # An earlier job with more shards: a reader globbing part-*.parquet must not see its lists.
                entry.unlink(missing_ok=True)
                removed += 1
        if self.report is not None:
            self.report.shards_removed = removed
        self.write_manifest()

    def _sidecar(self, p: int) -> dict | None:
        side = self.path(p).with_suffix(".json")
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def is_complete(self, p: int) -> bool:
        """Shard ``p`` exists, matches its sidecar's checksum, covers its users and has this job's fingerprint."""
        from recsys.runs import file_sha256

        meta, path = self._sidecar(p), self.path(p)
        if meta is None or meta.get("fingerprint") != self.fingerprint or not path.is_file():
            return False
        return meta.get("users") == len(self.users(p)) and meta.get("sha256") == file_sha256(path)

    def write_sidecar(self, p: int, rows_written: int) -> None:
        """Shard ``p``'s ``.json`` sidecar: file, rows, users, sha256 and the job's fingerprint."""
        from recsys.io_utils import atomic_write_text
        from recsys.runs import file_sha256

        path = self.path(p)
        meta = {"file": path.name, "rows": rows_written, "users": len(self.users(p)), "sha256": file_sha256(path),
                "fingerprint": self.fingerprint}
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, sort_keys=True) + "\n", sweep=False)

    def write_manifest(self) -> dict:
        """``manifest.json``: the shards of this fingerprint present so far, whether the job is complete, and what
        produced it (every fingerprint field)."""
        from recsys.io_utils import atomic_write_text

        shards = [m for m in (self._sidecar(p) for p in range(self.n_parts))
                  if m is not None and m.get("fingerprint") == self.fingerprint]
        manifest = {"k": self.fields.get("k"), "n_shards": self.n_parts, "complete": len(shards) == self.n_parts,
                    "rows": sum(int(s.get("rows", 0)) for s in shards), "shards": shards,
                    "fingerprint": self.fingerprint, "produced_by": self.fields}
        atomic_write_text(self.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                          sweep=False)
        return manifest


def _arrow_type(vocab):
    import pyarrow as pa

    return pa.string() if vocab.ids.dtype == object else pa.from_numpy_dtype(vocab.ids.dtype)
