"""``recsys compare``: runs' test metrics with bootstrap CIs and Holm-corrected paired tests (table, bar chart)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.cli._common import OneLineParser

if TYPE_CHECKING:
    import numpy as np

PER_USER = "per_user_test.parquet"
_TESTS = {"ttest": "two-sided paired t-test", "wilcoxon": "two-sided Wilcoxon signed-rank test",
          "permutation": "two-sided paired permutation (sign-flip) test"}


@dataclass
class _RunResult:
    """What one run contributes: its per-user test values and the held-out test items of each user.

    Args:
        label: the run's name in the table.
        path: the run directory.
        dataset: the dataset name recorded with the run's data.
        users: external IDs of the users in ``per_user_test.parquet``.
        values: metric name → per-user values aligned with ``users``.
        held_out: external user ID → sorted external IDs of the user's test items.

    Shapes:
        users: ``[n]``; each of values: ``[n]``.
    """

    label: str
    path: Path
    dataset: str
    users: list
    values: dict[str, np.ndarray]
    held_out: dict


def _load(label: str, path: str) -> _RunResult:
    """Read a finished run's per-user test values and its test split (external IDs, without pandas)."""
    import numpy as np
    import pyarrow.parquet as pq

    from recsys.data.splits import TEST
    from recsys.errors import RunDirError
    from recsys.io_utils import arrow_to_numpy
    from recsys.runs import Run

    run = Run.open(path)
    per_user = run.artifact(PER_USER)
    if not per_user.is_file():
        raise RunDirError(f"run directory {path!r} has no {PER_USER!r} (its data had no test part, or the run "
                          "predates per-user results: fit it again)")
    table = pq.ParquetFile(per_user).read()
    users = table.column("user").to_pylist()
    values = {c: arrow_to_numpy(table.column(c)).astype(np.float64) for c in table.column_names if c != "user"}
    split_file = run.path / Run.DATA / "split.parquet"
    if not split_file.is_file():
        raise RunDirError(f"run directory {path!r} has no {str(Path(Run.DATA) / 'split.parquet')!r}")
    split = pq.ParquetFile(split_file).read(columns=["user", "item", "split"])
    test = arrow_to_numpy(split.column("split")) == TEST
    u_rows, i_rows = arrow_to_numpy(split.column("user"))[test], arrow_to_numpy(split.column("item"))[test]
    order = np.argsort(u_rows, kind="stable")
    u_rows, i_rows = u_rows[order], i_rows[order]
    u_ext = run.vocab("user").decode(u_rows).tolist()
    i_ext = run.vocab("item").decode(i_rows).tolist()
    held_out: dict = {}
    starts = np.flatnonzero(np.r_[True, u_rows[1:] != u_rows[:-1]]) if u_rows.size else np.zeros(0, dtype=np.int64)
    for s, e in zip(starts.tolist(), [*starts[1:].tolist(), u_rows.size], strict=True):
        held_out[u_ext[s]] = tuple(sorted(i_ext[s:e]))
    name_file = run.path / Run.DATA / "name.txt"
    dataset = name_file.read_text().strip() if name_file.is_file() else "data"
    return _RunResult(label, run.path, dataset, users, values, held_out)


def _shared_users(results: list[_RunResult]) -> list:
    """The users every run was tested on, with the same held-out items in every run; refuses other data.

    Raises:
        DataError: the runs share fewer than 2 test users, or hold out different items for users they share
            (another dataset, preprocessing or split: a paired comparison would pair unrelated measurements).
    """
    from recsys.errors import DataError

    first = results[0]
    shared = set(first.users)
    for r in results[1:]:
        shared &= set(r.users)
    datasets = ", ".join(dict.fromkeys(f"{r.label}: {r.dataset}" for r in results))
    if len(shared) < 2:
        raise DataError(f"the runs share {len(shared)} test users, too few to compare: they were evaluated on "
                        f"different data ({datasets})")
    for r in results[1:]:
        differ = sum(1 for u in shared if r.held_out.get(u) != first.held_out.get(u))
        if differ:
            raise DataError(f"runs {first.label} and {r.label} hold out different test items for {differ} of the "
                            f"{len(shared)} users they share ({datasets}): they were evaluated on different data "
                            "or splits; compare runs of one dataset and split")
    # The first run's order, which is user-row order: deterministic for the bootstrap's seed.
    return [u for u in first.users if u in shared]


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"


def _markdown(results: list[_RunResult], metrics: list[str], res: dict, baseline: int, a) -> str:
    """The comparison as a Markdown table with a note on what the numbers are."""
    header = ["run"]
    for m in metrics:
        header += [f"{m} [{a.confidence:.0%} CI]", f"p vs {results[baseline].label}"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (2 * len(metrics))]
    for i, r in enumerate(results):
        cells = [f"{r.label} (baseline)" if i == baseline else r.label]
        for j in range(len(metrics)):
            cells.append(f"{res['mean'][i, j]:.4f} [{res['lo'][i, j]:.4f}, {res['hi'][i, j]:.4f}]")
            cells.append(_fmt_p(float(res["p_holm"][i, j])))
        lines.append("| " + " | ".join(cells) + " |")
    datasets = ", ".join(dict.fromkeys(r.dataset for r in results))
    family = len(results) - 1
    lines += ["", f"Test split of {datasets}, {res['n']} users shared by every run. CI: percentile bootstrap over "
              f"users ({a.resamples} resamples, seed {a.seed}, the same draws for every run). p: "
              f"{_TESTS[a.test]}{f' ({a.permutations} sign flips)' if a.test == 'permutation' else ''} on the "
              f"per-user values against {results[baseline].label}, Holm-corrected over the {family} "
              f"comparison{'s' if family != 1 else ''} of each metric."]
    return "\n".join(lines) + "\n"


def cmd_compare(argv: list[str]) -> int:
    """Compare finished runs on their test split: means, bootstrap CIs, Holm-corrected paired p-values.

    Args:
        argv: the command line after ``recsys compare``.

    Raises:
        RunDirError: a run directory is missing or lacks its per-user test values.
        DataError: the runs were evaluated on different data, or a metric is not in every run's per-user file.
    """
    import numpy as np

    p = OneLineParser(
        prog="recsys compare",
        description="Test metrics of finished runs with bootstrap confidence intervals (users resampled) and "
                    "paired p-values against a baseline (the first run, or --baseline), Holm-corrected, on the "
                    "users the runs share. Prints a Markdown table; --out also writes compare.md, compare.png "
                    "(bars with CI whiskers) and compare.json.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="Run directories of `recsys fit`.")
    p.add_argument("--out", default=None, help="Directory for compare.md, compare.png and compare.json.")
    p.add_argument("--metric", "--metrics", dest="metrics", nargs="+", default=["ndcg@20", "recall@20"],
                   help="Metrics of per_user_test.parquet to compare (default ndcg@20 recall@20).")
    p.add_argument("--baseline", default=None, metavar="RUN",
                   help="Run the others are tested against (default the first; added when not listed).")
    p.add_argument("--test", choices=sorted(_TESTS), default="ttest", help="Paired test (default ttest).")
    p.add_argument("--resamples", type=int, default=1000, help="Bootstrap resamples of the CIs (default 1000).")
    p.add_argument("--permutations", type=int, default=10_000, help="Sign flips of --test permutation.")
    p.add_argument("--confidence", type=float, default=0.95, help="CI coverage (default 0.95).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap and the permutation test.")
    a = p.parse_args(argv)
    if a.resamples < 1 or a.permutations < 1 or not 0 < a.confidence < 1:
        p.error("--resamples and --permutations must be >= 1 and --confidence in (0, 1)")
    from recsys.errors import DataError
    from recsys.metrics.significance import compare_per_user
    from recsys.plots import plot_metric_bars, run_labels

    paths = list(a.runs)
    baseline = 0
    if a.baseline is not None:
        resolved = [Path(r).resolve() for r in paths]
        if Path(a.baseline).resolve() in resolved:
            baseline = resolved.index(Path(a.baseline).resolve())
        else:
            paths.insert(0, a.baseline)
    results = [_load(label, path) for label, path in zip(run_labels(paths), paths, strict=True)]
    for r in results:
        absent = [m for m in a.metrics if m not in r.values]
        if absent:
            raise DataError(f"run {r.label} has no per-user {', '.join(absent)} (it has {', '.join(r.values)})",
                            file=str(r.path / PER_USER))
    users = _shared_users(results)
    for r in results:
        if len(r.users) > len(users):
            print(f"[recsys] {r.label}: {len(r.users) - len(users)} of its {len(r.users)} test users are not in "
                  "every run; compared on the shared ones")
    values = np.empty((len(results), len(users), len(a.metrics)))
    for i, r in enumerate(results):
        row = {u: k for k, u in enumerate(r.users)}
        idx = np.fromiter((row[u] for u in users), dtype=np.int64, count=len(users))
        for j, m in enumerate(a.metrics):
            values[i, :, j] = r.values[m][idx]
    res = compare_per_user(values, baseline, a.test, a.resamples, a.confidence, a.seed, a.permutations)
    md = _markdown(results, a.metrics, res, baseline, a)
    print(md, end="")
    if a.out:
        from recsys.cli._common import _write_json
        from recsys.io_utils import atomic_write_text

        out = Path(a.out)
        atomic_write_text(out / "compare.md", md)
        plot_metric_bars([r.label for r in results], a.metrics, res["mean"], res["lo"], res["hi"],
                         out / "compare.png", p_holm=res["p_holm"], baseline=results[baseline].label,
                         confidence=a.confidence)

        def cell(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        _write_json(out / "compare.json", {
            "baseline": results[baseline].label, "n_users": res["n"], "test": a.test, "resamples": a.resamples,
            "confidence": a.confidence, "seed": a.seed,
            "runs": [{"label": r.label, "run_dir": str(r.path), "dataset": r.dataset,
                      **{m: {"mean": cell(res["mean"][i, j]), "ci": [cell(res["lo"][i, j]), cell(res["hi"][i, j])],
                             "diff_vs_baseline": cell(res["diff"][i, j]), "p": cell(res["p"][i, j]),
                             "p_holm": cell(res["p_holm"][i, j])} for j, m in enumerate(a.metrics)}}
                     for i, r in enumerate(results)]})
        print(f"[recsys] wrote {out / 'compare.md'}, {out / 'compare.png'} and {out / 'compare.json'}")
    return 0
