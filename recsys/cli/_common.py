"""Helpers every ``recsys`` verb shares: logging set-up, the metrics table, JSON outputs, serving options."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def format_metrics(metrics: dict[str, float]) -> str:
    """:func:`recsys.metrics.report.format_metrics`, imported on use (numpy and scipy cost every verb 0.3 s)."""
    from recsys.metrics.report import format_metrics as fmt

    return fmt(metrics)


class _NoAdverts(logging.Filter):
    """Drops Lightning's suggestions to install third-party services (not messages about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    # Lightning's import gives the "lightning" logger its own console handler and lets its records reach the root
    # handler too, so every Lightning line printed twice: stop them at Lightning's handler.
    logging.getLogger("lightning").propagate = False
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
    import warnings

    # Lightning's own internals (a deprecated torch API it calls; the per-step logging interval, while recsys logs
    # per epoch): nothing a user can act on, printed by every fit.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


class OneLineParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose usage errors are one line (argparse prints its usage block first).

    The line names the option and the valid range as argparse words it, and points at ``--help``; the exit status
    stays argparse's 2.
    """

    def error(self, message: str):
        """Print ``PROG: error: MESSAGE (PROG --help lists the options)`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} ({self.prog} --help lists the options)\n")


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a bad value is argparse's one line)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer of at least 0 (a bad value is argparse's one line)."""
    return _int_at_least(text, 0)


def _write_json(path: Path, obj) -> None:
    """An ``--out`` JSON file outside any run directory (results inside a run go through ``Run.write_json``)."""
    from recsys.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _launch_rank() -> int:
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------- serving
INDEX_HELP = ("Item index to rank through, KIND[:OPTION=VALUE,...] (default exact): exact (brute force); "
              "prefix:dim=32 (a Matryoshka prefix; prefix:dim=32,coarse=8,shortlist=200 shortlists at 8 dims, "
              "re-ranks at 32); hamming:shortlist=200 (sign-bit shortlist, float re-rank; hamming:codes_only=true "
              "ranks by the codes alone); lowrank:rank=8 (a low-rank model truncated); quantized "
              "(latent-quantization codes); pq:M=8,K=256,rerank=200 (product quantization fitted on the item table, "
              "asymmetric distance, float re-rank; pq:stored=true serves a ProductQuantization model's codes); "
              "rq:M=8,K=256 (residual quantization); seismic:n_postings=2000,query_cut=10 (inverted index, SESA); "
              "faiss:flat (faiss exact inner product; faiss:ivf,nlist=256,nprobe=16 inverted lists; "
              "faiss:hnsw,m=32,ef_search=64 graph; faiss:binary sign codes by Hamming distance, "
              "faiss:binary,shortlist=200 re-ranks them in float; pip install 'recsys[ann]').")


def _index_spec(text: str):
    """``--index`` values as a typed :class:`recsys.scoring.index.IndexSpec`; a bad spec is argparse's one line."""
    from recsys.scoring.index import parse_index_spec

    try:
        return parse_index_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_serving_args(p) -> None:
    """Options shared by ``evaluate`` and ``score``: the item index, and an old run's item table (a gallery)."""
    g = p.add_argument_group("serving (item indexes, compatible galleries)")
    g.add_argument("--index", type=_index_spec, default="exact", metavar="SPEC", help=INDEX_HELP)
    g.add_argument("--gallery", default=None, metavar="RUN",
                   help="Run directory of an old model: score this run's queries against its item table.")


def _is_exact(spec) -> bool:
    from recsys.scoring.index import ExactSpec

    return isinstance(spec, ExactSpec)


def _write_result(run, out: str | None, name: str, obj) -> None:
    if out:
        _write_json(Path(out), obj)
    else:
        run.write_json(name, obj)

