"""``recsys export``: user and item embeddings of a finished run, as Parquet or as a faiss index."""

from __future__ import annotations

from recsys.cli._common import OneLineParser, _index_spec


def cmd_export(argv: list[str]) -> int:
    p = OneLineParser(prog="recsys export",
                      description="Write user and item embeddings (Parquet, external IDs) for ANN serving, or a faiss "
                                  "index over the items (--format faiss).")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--out", required=True,
                   help="Output directory (an existing one or a new name, outside any run directory); each file is "
                        "replaced atomically.")
    p.add_argument("--format", choices=("parquet", "faiss"), default="parquet",
                   help="parquet (default): users.parquet, items.parquet, scorer.json. faiss: items.faiss, "
                        "item_ids.parquet (index row -> item ID), users.parquet, index.json "
                        "(pip install 'recsys[ann]').")
    p.add_argument("--index", type=_index_spec, default=None, metavar="SPEC",
                   help="With --format faiss: the faiss index to write (default faiss:flat; faiss:ivf,nlist=256, "
                        "faiss:hnsw,m=32, faiss:binary[,shortlist=200]).")
    a = p.parse_args(argv)
    from recsys.scoring.index import FaissSpec

    if a.index is not None and a.format != "faiss":
        p.error("--index applies to --format faiss only")
    if a.index is not None and not isinstance(a.index, FaissSpec):
        p.error(f"--format faiss writes a faiss index: --index must be a faiss spec (faiss:flat, faiss:ivf, "
                f"faiss:hnsw, faiss:binary), not {a.index}")
    from recsys.scoring.export import export_run

    info = export_run(a.run_dir, a.out, a.format, a.index)
    what = f" as a faiss {info['faiss_class']} ({info['index']})" if a.format == "faiss" else ""
    print(f"[recsys] exported {info['n_users']} users and {info['n_items']} items (dim {info['dim']}) to "
          f"{a.out}{what}")
    return 0
