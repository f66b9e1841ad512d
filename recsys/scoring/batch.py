"""Batch top-k scoring of a finished run into Parquet, streamed chunk by chunk and written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

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

    def lines(self) -> list[str]:
        """The summary lines ``recsys score`` prints (after the rows-written line)."""
        out = []
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

    payload = run.payload
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
    written atomically with a ``.json`` sidecar (rows, users, sha256) and a ``manifest.json`` over all shards. A
    rerun verifies existing shards against their sidecars, skips the complete ones and rewrites missing, truncated
    or corrupted ones, so a killed job resumes to byte-identical output. ``num_shards`` / ``shard_index`` let an
    external scheduler split the shards between workers (shard i goes to worker ``i % num_shards``).

    Args:
        run_dir: a finished ``recsys fit`` run.
        out: the Parquet file (or, when sharded, the directory) to write.
        k: list length.
        users_file: external user IDs to score (all users of the run, or of ``histories``, when None).
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
        DataError: unknown user IDs under ``unknown_users="error"``, or a bad histories or users file.
        ServingError: new items or explanations with a gallery (another item table), explanations with histories
            or popular fallbacks, a model that cannot score histories, or an index that does not fit the run (see
            :func:`recsys.recommender.table_score_fn`).
    """
    if gallery is not None and (new_items is not None or explain):
        raise ServingError("a gallery cannot be combined with new items or explanations (they describe this "
                           "run's own item table)")
    if new_items is not None and explain:
        raise ServingError("new items cannot be explained (explanations use the run's stored concept tables)")
    if explain and (histories is not None or unknown_users == "popular"):
        raise ServingError("--explain explains the run's stored user vectors: it cannot be combined with "
                           "--histories or --unknown-users popular")
    job = _ScoringJob(run_dir, k, users_file, _exclude_mode(exclude, keep_seen), chunk_size, index, gallery,
                      new_items, unknown_users, histories)
    if precision != "32":
        from recsys.scoring.topk import scoring_dtype

        job.dtype = scoring_dtype(precision, "cpu")
    if explain:
        from recsys.scoring.explain import attach_explicit

        attach_explicit(job)
    from recsys.progress import progress

    if shard_users is None and num_shards == 1:
        with progress(len(job.rows), "scoring users", "users") as job.bar:
            job.report.rows = job.write(Path(out), job.rows)
        return job.report
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
    parts = range(0, max(1, -(-len(job.rows) // per)))
    todo = [p for p in parts if p % num_shards == shard_index
            and not _shard_is_complete(out / f"part-{p:05d}.parquet", len(job.rows[p * per:(p + 1) * per]))]
    with progress(sum(len(job.rows[p * per:(p + 1) * per]) for p in todo), "scoring users", "users") as job.bar:
        for p in todo:
            path = out / f"part-{p:05d}.parquet"
            rows = job.rows[p * per:(p + 1) * per]
            written = job.write(path, rows)
            _write_sidecar(path, written, rows)
            job.report.rows += written
    _write_manifest(out, len(parts), k)
    return job.report


def _exclude_mode(exclude: str, keep_seen: bool) -> str:
    if exclude not in EXCLUDE_CHOICES:
        raise ValueError(f"exclude must be one of {', '.join(EXCLUDE_CHOICES)}, not {exclude!r}")
    if keep_seen and exclude not in ("all", "none"):
        raise ValueError(f"keep_seen (the deprecated alias of exclude='none') contradicts exclude={exclude!r}")
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
            raise ValueError(f"unknown_users must be one of {', '.join(UNKNOWN_USERS_CHOICES)}, not "
                             f"{unknown_users!r}")
        #: the run, read once: its payload, vocabularies and split are cached on it.
        self.run = run = Run.open(run_dir)
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
            raise DataError(f"unknown user IDs: {n_unknown} of {len(raw)} are not {where} (first: {shown}); {fix}",
                            file=source, column="user", row=int(file_rows[first[0]]))
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

    def write(self, path: Path, rows: np.ndarray, chunks=None) -> int:
        """Stream the top-k of ``rows`` (scored here, or given as ``chunks``) into one Parquet file, atomically.

        Every chunk is checked against the users' known interactions (:meth:`consumed`) into :attr:`report`.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        from recsys.io_utils import atomic_path, numpy_to_arrow

        k, n = self.k, 0
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, self.schema) as writer:
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
