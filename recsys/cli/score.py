"""``recsys score``: top-k recommendations of a finished run, as Parquet."""

from __future__ import annotations

import sys
import time

from recsys.cli._common import OneLineParser, _add_serving_args, _is_exact, _launch_rank, nonnegative_int, positive_int


def cmd_score(argv: list[str]) -> int:
    p = OneLineParser(
        prog="recsys score", description="Top-k recommendations for users, as Parquet.",
        epilog="Any --trainer.* option (e.g. --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator gpu "
               "--trainer.num_nodes N) scores with Lightning's trainer.predict instead: OUT becomes a directory of "
               "shards (--shard-users, default 50000), written by the rank that scored each.")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--k", type=positive_int, default=100,
                   help="List length (default 100); more than the catalogue's items gives catalogue-long lists, "
                        "with a note.")
    p.add_argument("--out", required=True,
                   help="Output Parquet file (a directory with --shard-users / --num-shards): a regular file or a "
                        "new name, outside any run directory; replaced atomically.")
    p.add_argument("--users", default=None,
                   help="File of external user IDs (one per line, or a 'user' column). Default: every user of the "
                        "run, or of --histories when given.")
    p.add_argument("--exclude", choices=["all", "train", "none"], default=None,
                   help="Items left out of a user's list: all (default) = every known interaction of the user in the "
                        "run's data (train+valid+test) and their --histories items; train = training interactions "
                        "(and --histories items) only, the earlier default; none = keep everything. The output is "
                        "checked against the known interactions and the count of already-consumed items printed.")
    p.add_argument("--keep-seen", action="store_true", help="Deprecated: the same as --exclude none.")
    p.add_argument("--unknown-users", choices=["error", "skip", "popular"], default="error",
                   help="Requested user IDs in neither the run's vocabulary nor --histories: error (default; one "
                        "line naming the file, the count and the first IDs), skip (left out, counted) or popular "
                        "(the most-popular training items, counted). IDs keep the run's user ID type.")
    p.add_argument("--histories", default=None, metavar="FILE",
                   help="CSV or Parquet of user,item pairs (optional timestamp; external IDs; users may be new): "
                        "scores these users from their items by the model's fold-in (MF, ALS and BPR by "
                        "least squares on the item table; SASRec, Recformer, AlphaRec and the linear probe by "
                        "encoding the history; EASE, item-kNN, GF-CF and most-popular by scoring it directly). A "
                        "user also in the run is scored from the file (histories take precedence), their run "
                        "interactions still excluded per --exclude. Items not in the catalogue are dropped and "
                        "counted; a history's items are excluded unless --exclude none.")
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="Users per GEMM chunk (default: 256 MiB budget).")
    p.add_argument("--shard-users", type=positive_int, default=None,
                   help="Write OUT as a directory of Parquet shards of this many users, resumable: a re-run keeps "
                        "the shards whose fingerprint (run, model.pt, k, exclusions, index, users, precision, ...) "
                        "matches and rewrites the others; manifest.json records what produced them.")
    p.add_argument("--num-shards", type=positive_int, default=1,
                   help="Workers sharing the job (external schedulers).")
    p.add_argument("--shard-index", type=nonnegative_int, default=0,
                   help="This worker's index in 0..num-shards-1.")
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto",
                   help="Score dtype: bf16 shortlists in bf16 and re-ranks in float32; auto = bf16 on CUDA with "
                        "bf16 support, float32 on CPU.")
    _add_serving_args(p)
    p.add_argument("--explain", action="store_true",
                   help="Add an 'explanation' column: each score's top-3 concepts and their shares (SESA models).")
    p.add_argument("--new-items", default=None,
                   help="Side table (CSV/Parquet: an 'item' column plus the training item attributes) of items "
                        "unseen in training, embedded from their text and ranked with the catalogue (text models; "
                        "with --index, kinds over plain tables: exact, prefix, hamming, seismic, faiss).")
    a, rest = p.parse_known_args(argv)
    if a.shard_index >= a.num_shards:
        p.error(f"argument --shard-index: must be in 0..{a.num_shards - 1} (--num-shards {a.num_shards}), got "
                f"{a.shard_index}")
    if a.keep_seen:
        if a.exclude not in (None, "none"):
            p.error(f"--keep-seen (deprecated: --exclude none) contradicts --exclude {a.exclude}")
        print("[recsys] --keep-seen is deprecated: use --exclude none", file=sys.stderr)
        a.exclude = "none"
    a.exclude = a.exclude or "all"
    if rest:
        if a.new_items:
            p.error("--new-items is not supported with --trainer.* options")
        return _score_lightning(p, a, rest)
    from recsys.scoring.batch import run_scoring

    t = time.perf_counter()
    report = run_scoring(a.run_dir, a.out, k=a.k, users_file=a.users, exclude=a.exclude, chunk_size=a.chunk_size,
                         shard_users=a.shard_users, num_shards=a.num_shards, shard_index=a.shard_index,
                         index=a.index, gallery=a.gallery, explain=a.explain, precision=a.precision,
                         new_items=a.new_items, unknown_users=a.unknown_users, histories=a.histories)
    how = "" if _is_exact(a.index) else f" (index {a.index})"
    print(f"[recsys] wrote {report.rows} rows to {a.out}{how} in {time.perf_counter() - t:.2f} s")
    for line in report.lines():
        print(f"[recsys] {line}")
    return 0


def _score_lightning(p, a, rest: list[str]) -> int:
    """``recsys score`` with ``--trainer.*`` options: Lightning's predict loop (DDP etc.), one shard per step."""
    if not rest[0].startswith("--trainer."):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if a.num_shards != 1 or not _is_exact(a.index) or a.gallery or a.explain:
        p.error("--trainer.* scoring supports neither --num-shards (the ranks split the shards) nor a non-exact "
                "--index, --gallery or --explain")
    import lightning as L
    from jsonargparse import ArgumentParser

    tp = ArgumentParser(prog="recsys score", default_env=False)
    tp.add_class_arguments(L.Trainer, "trainer", instantiate=False)
    targs = dict(vars(tp.instantiate(tp.parse_args(rest)).trainer))
    from recsys.scoring.predict import predict_report, read_manifest

    t = time.perf_counter()
    report = predict_report(a.run_dir, a.out, k=a.k, users_file=a.users, exclude=a.exclude,
                            chunk_size=a.chunk_size, shard_users=a.shard_users, precision=a.precision,
                            trainer=targs, unknown_users=a.unknown_users, histories=a.histories)
    if _launch_rank() == 0:
        m = read_manifest(a.out)
        print(f"[recsys] wrote {report.rows} rows on rank 0 to {a.out} in {time.perf_counter() - t:.2f} s; "
              f"manifest: {m['rows']} rows in {len(m['shards'])}/{m['n_shards']} shards, complete={m['complete']}")
        for line in report.lines():
            print(f"[recsys] rank 0: {line}")
    return 0

