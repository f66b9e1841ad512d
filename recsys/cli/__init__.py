"""The ``recsys`` command: one module per verb (``recsys/cli/<verb>.py``), dispatched from here.

Imports are lazy: ``score`` and ``export`` from a run's stored tables never import jsonargparse, Lightning,
torch-geometric or transformers, so a scoring job starts in about the time it takes to import torch. Commands that
rebuild the model (``evaluate``, ``score`` of a model without tables or with ``--new-items``) re-validate the run's
config with the fit parser first (see :mod:`recsys.runs`), which imports Lightning.
"""

from __future__ import annotations

import os
import sys

from recsys.cli._common import INDEX_HELP, _setup_logging, format_metrics
from recsys.cli.compare import cmd_compare
from recsys.cli.configs import cmd_configs
from recsys.cli.data import cmd_data
from recsys.cli.evaluate import cmd_evaluate
from recsys.cli.export import cmd_export
from recsys.cli.fit import cmd_fit
from recsys.cli.plot import cmd_plot
from recsys.cli.score import cmd_score
from recsys.cli.tune import cmd_tune

__all__ = ["COMMANDS", "INDEX_HELP", "VERBS", "format_metrics", "main"]

COMMANDS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "score": cmd_score, "export": cmd_export, "data": cmd_data,
            "configs": cmd_configs, "plot": cmd_plot, "compare": cmd_compare, "tune": cmd_tune}
VERBS = {
    "fit": "train a model from a YAML config into a run directory (model, metrics, logs, learning curve)",
    "evaluate": "full-ranking metrics of a finished run on its valid or test split",
    "score": "top-k recommendations of a finished run for its users, written as Parquet",
    "export": "user and item embeddings of a finished run, as Parquet with external IDs",
    "data": "load a dataset and print what it holds (sizes, split, side tables)",
    "configs": "list the packaged configs (recsys fit --config NAME), one line each",
    "tune": "search fit options with Optuna (pruned trials, resumable study, best config as YAML)",
    "plot": "learning curves of one or more runs overlaid in one PNG (training loss, validation metric)",
    "compare": "test metrics of runs with bootstrap CIs and Holm-corrected paired p-values (table, bar chart)",
}


def _usage() -> str:
    lines = ["usage: recsys COMMAND [options]   (recsys COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {verb:<10}{text}" for verb, text in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one ``recsys`` command; returns its exit status.

    A mistake in the user's input (a :class:`recsys.errors.RecsysError`, a bad option) is reported in one line on
    stderr. ``--traceback`` before the command, or ``RECSYS_TRACEBACK=1``, shows the full traceback (and
    jsonargparse's full report of a bad option) instead.

    Args:
        argv: the arguments after ``recsys`` (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    while argv and argv[0] in ("--traceback", "--debug"):
        # Through the environment, so that the fit parser and any re-launched DDP rank see it as well.
        argv = argv[1:]
        os.environ["RECSYS_TRACEBACK"] = "1"
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage() + "\n\noptions:\n  --debug, --traceback  (before COMMAND, or RECSYS_TRACEBACK=1) show the full "
              "traceback of an error, not its one-line message")
        return 0
    if argv[0] not in COMMANDS:
        print(f"recsys: error: unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)}; recsys --help)",
              file=sys.stderr)
        return 2
    _setup_logging()
    from recsys.errors import RecsysError, UsageError

    traceback = os.environ.get("RECSYS_TRACEBACK", "") not in ("", "0")
    try:
        return COMMANDS[argv[0]](argv[1:])
    except RecsysError as e:
        if traceback:
            raise
        print(f"recsys {argv[0]}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        if traceback:
            raise
        print(f"recsys {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of the command. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # The system refused (a full disk, a permission, a missing device): its own message names the path.
        if traceback:
            raise
        print(f"recsys {argv[0]}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        # Not a foreseen mistake, so a bug or an unforeseen input: still one line, with how to see the rest.
        if traceback:
            raise
        text = " ".join(str(e).split())[:300]
        print(f"recsys {argv[0]}: error: unexpected {type(e).__name__}: {text} (recsys --debug {argv[0]} ... "
              "shows the traceback)", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
