"""``recsys export``: user and item embeddings of a finished run."""

from __future__ import annotations

import argparse


def cmd_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="recsys export",
                                description="Write user and item embeddings (Parquet, external IDs) for ANN serving.")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--out", required=True, help="Output directory.")
    a = p.parse_args(argv)
    from recsys.scoring.export import export_run

    info = export_run(a.run_dir, a.out)
    print(f"[recsys] exported {info['n_users']} users and {info['n_items']} items (dim {info['dim']}) to {a.out}")
    return 0

