"""``recsys plot``: several runs' learning curves overlaid in one PNG (training loss and a monitored metric)."""

from __future__ import annotations

from pathlib import Path

from recsys.cli._common import OneLineParser

LOG = Path("logs") / "metrics.csv"


def cmd_plot(argv: list[str]) -> int:
    """Draw the learning curves of the given runs from their ``logs/metrics.csv`` into one PNG.

    Args:
        argv: the command line after ``recsys plot``.

    Raises:
        RunDirError: a run directory is missing or has no CSV training log.
        DataError: no run logged the metric nor a training loss.
    """
    p = OneLineParser(
        prog="recsys plot",
        description="Learning curves of one or more runs (training loss and a validation metric per epoch), "
                    "overlaid with the run names as legend. Runs without a validation part are drawn from their "
                    "test_monitor/* series, dashed. A run still training can be plotted: only its log is read.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="Run directories of `recsys fit`.")
    p.add_argument("--out", default="learning_curves.png", help="PNG to write (default ./learning_curves.png).")
    p.add_argument("--metric", default="valid/ndcg@20",
                   help="Series of the right panel (default valid/ndcg@20; test_monitor/<name> is drawn for runs "
                        "without validation; a bare name such as recall@20 means either).")
    a = p.parse_args(argv)
    from recsys.errors import RunDirError
    from recsys.plots import plot_learning_curves, read_log, resolve_curve_metric, run_labels

    logs = {}
    for label, run in zip(run_labels(a.runs), a.runs, strict=True):
        path = Path(run)
        if not path.is_dir():
            raise RunDirError(f"run directory {run!r} does not exist")
        if not (path / LOG).is_file():
            raise RunDirError(f"run directory {run!r} has no {str(LOG)!r}: baselines fitted without Lightning (pop, "
                              "ease, als, ...) have no learning curve, and a run fitted with another --trainer.logger "
                              "wrote that logger's files instead")
        logs[label] = path / LOG
    missing = [label for label, log in logs.items() if resolve_curve_metric(read_log(log), a.metric) is None]
    if missing:
        print(f"[recsys] {a.metric} is not in the log of {', '.join(missing)}: training loss only")
    out = plot_learning_curves(logs, a.out, a.metric)
    print(f"[recsys] wrote {out}")
    return 0
