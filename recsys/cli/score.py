"""``recsys score``: top-k recommendations of a finished run, as Parquet."""

from __future__ import annotations

import argparse
import time

from recsys.cli._common import _add_serving_args, _is_exact, _launch_rank


def cmd_score(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="recsys score", description="Top-k recommendations for users, as Parquet.",
        epilog="Any --trainer.* option (e.g. --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator gpu "
               "--trainer.num_nodes N) scores with Lightning's trainer.predict instead: OUT becomes a directory of "
               "shards (--shard-users, default 50000), written by the rank that scored each.")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--out", required=True, help="Output Parquet file.")
    p.add_argument("--users", default=None, help="File of external user IDs (one per line, or a 'user' column).")
    p.add_argument("--keep-seen", action="store_true", help="Do not exclude the users' training items.")
    p.add_argument("--chunk-size", type=int, default=None, help="Users per GEMM chunk (default: 256 MiB budget).")
    p.add_argument("--shard-users", type=int, default=None,
                   help="Write OUT as a directory of Parquet shards of this many users, resumable.")
    p.add_argument("--num-shards", type=int, default=1, help="Workers sharing the job (external schedulers).")
    p.add_argument("--shard-index", type=int, default=0, help="This worker's index in 0..num-shards-1.")
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
    if rest:
        if a.new_items:
            p.error("--new-items is not supported with --trainer.* options")
        return _score_lightning(p, a, rest)
    from recsys.scoring.batch import score_run

    t = time.perf_counter()
    n = score_run(a.run_dir, a.out, k=a.k, users_file=a.users, keep_seen=a.keep_seen, chunk_size=a.chunk_size,
                  shard_users=a.shard_users, num_shards=a.num_shards, shard_index=a.shard_index, index=a.index,
                  gallery=a.gallery, explain=a.explain, precision=a.precision, new_items=a.new_items)
    how = "" if _is_exact(a.index) else f" (index {a.index})"
    print(f"[recsys] wrote {n} rows to {a.out}{how} in {time.perf_counter() - t:.2f} s")
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
    from recsys.scoring.predict import predict_run, read_manifest

    t = time.perf_counter()
    n = predict_run(a.run_dir, a.out, k=a.k, users_file=a.users, keep_seen=a.keep_seen, chunk_size=a.chunk_size,
                    shard_users=a.shard_users, precision=a.precision, trainer=targs)
    if _launch_rank() == 0:
        m = read_manifest(a.out)
        print(f"[recsys] wrote {n} rows on rank 0 to {a.out} in {time.perf_counter() - t:.2f} s; manifest: "
              f"{m['rows']} rows in {len(m['shards'])}/{m['n_shards']} shards, complete={m['complete']}")
    return 0

