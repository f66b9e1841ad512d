"""Pictures of runs (matplotlib, imported only when drawing): learning curves, metric bars, quality-cost trade-offs.

Every function writes one PNG atomically and returns its path. ``plot_learning_curve`` draws one run (``recsys
fit``); ``plot_learning_curves`` overlays several (``recsys plot``); ``plot_metric_bars`` draws test metrics with
confidence intervals (``recsys compare``); ``plot_tradeoff`` draws quality against a cost such as parameters or
bytes per item (the Pareto and factorization studies in ``scripts/``).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_learning_curve", "plot_learning_curves", "plot_metric_bars", "plot_tradeoff", "read_log",
           "resolve_curve_metric", "run_labels"]


def read_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Per-metric ``(epoch, value)`` points of a Lightning CSV log, whose train and validation rows lie apart.

    Args:
        path: ``logs/metrics.csv`` of a run.

    Returns:
        ``{"train/loss": [(0, 0.69), ...], "valid/ndcg@20": [...], ...}``, each sorted by epoch.
    """
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                epoch = int(float(row.get("epoch") or "nan"))
            except ValueError:
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                v = float(value)
                if math.isfinite(v):
                    series.setdefault(key, {})[epoch] = v
    return {k: sorted(v.items()) for k, v in series.items()}


def plot_learning_curve(log_csv: str | Path, out: str | Path) -> Path:
    """Draw the training loss and the monitored ranking metrics per epoch into a PNG (written atomically).

    The x axis counts epochs trained (Lightning's 0-based epoch + 1). Metrics logged as ``test_monitor/*`` (a run
    without a validation part) are titled as test-set monitoring, so the picture cannot be mistaken for a
    model-selection curve.

    Args:
        log_csv: the run's ``logs/metrics.csv``.
        out: the PNG path.
    """
    plt = _pyplot()
    series = read_log(log_csv)
    monitored = sorted(k for k in series if k.startswith(("valid/", "test_monitor/"))
                       and k.split("/", 1)[1].split("@")[0] in ("recall", "ndcg"))
    fig, axes = plt.subplots(1, 2 if monitored else 1, figsize=(11 if monitored else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    for key in ("train/loss",):
        if key in series:
            ep, val = zip(*series[key])
            ax.plot([e + 1 for e in ep], val, marker=".", label=key)
    ax.set_xlabel("epochs trained")
    ax.set_title("training loss")
    ax.legend()
    if monitored:
        ax = axes[0][1]
        for key in monitored:
            ep, val = zip(*series[key])
            ax.plot([e + 1 for e in ep], val, marker="o", label=key)
        ax.set_xlabel("epochs trained")
        test = any(k.startswith("test_monitor/") for k in monitored)
        ax.set_title("test-set monitoring (not used for model selection)" if test else "validation")
        ax.legend()
    fig.tight_layout()
    return _save(fig, out, dpi=100)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path, dpi: int) -> Path:
    from recsys.io_utils import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _pyplot().close(fig)
    return out


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short distinct names for run directories: the last path component, with parents added until all differ.

    Args:
        paths: run directories (``runs/p1/mf``, ``runs/p2/mf``, ``runs/lightgcn``).

    Returns:
        One label per path (``p1/mf``, ``p2/mf``, ``lightgcn``); a path given twice keeps one name.
    """
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(pt[-d:]) for pt, d in zip(parts, depth, strict=True)]
        clash = False
        for i, lab in enumerate(labels):
            # The same directory twice is one run named once, not a clash to resolve with more parents.
            if any(labels[j] == lab and parts[j] != parts[i] for j in range(len(labels))) and depth[i] < len(parts[i]):
                depth[i] += 1
                clash = True
        if not clash:
            return labels


def resolve_curve_metric(series: Mapping[str, Sequence[tuple[int, float]]], metric: str) -> str | None:
    """The logged series to draw for ``metric``: the name itself, else its ``test_monitor/`` twin, else None.

    A run without a validation part logs ``test_monitor/ndcg@20`` where others log ``valid/ndcg@20``; a bare name
    (``ndcg@20``) means the validation series when there is one.

    Args:
        series: :func:`read_log` of one run.
        metric: ``valid/ndcg@20``, ``test_monitor/recall@20``, ``train/loss`` or a bare ``ndcg@20``.
    """
    bare = metric.split("/", 1)[1] if metric.startswith(("valid/", "test_monitor/")) else metric
    for key in (metric, f"valid/{bare}", f"test_monitor/{bare}"):
        if key in series:
            return key
    return None


def plot_learning_curves(logs: Mapping[str, str | Path], out: str | Path, metric: str = "valid/ndcg@20",
                         dpi: int = 120) -> Path:
    """Overlay several runs' learning curves: training loss and one monitored metric against epochs trained.

    Each run keeps one colour in both panels. A validation curve marks its best epoch with a star (the epoch
    early stopping keeps when the metric is the monitored one); a run without a validation part is drawn dashed
    from its ``test_monitor/*`` series and labelled as test-set monitoring (its last epoch is kept, not its best).

    Args:
        logs: legend label → the run's ``logs/metrics.csv`` (Lightning's CSV log, train and valid rows apart).
        out: the PNG path.
        metric: the series of the right panel (see :func:`resolve_curve_metric`).
        dpi: resolution of the PNG.

    Raises:
        DataError: no run logged ``metric`` nor a training loss.
    """
    from recsys.errors import DataError

    curves = {label: read_log(path) for label, path in logs.items()}
    chosen = {label: resolve_curve_metric(series, metric) for label, series in curves.items()}
    if not any(chosen.values()) and not any("train/loss" in s for s in curves.values()):
        raise DataError(f"no run logged {metric!r} or train/loss", file=str(next(iter(logs.values()), "")))
    plt = _pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bare = metric.split("/", 1)[1] if metric.startswith(("valid/", "test_monitor/")) else metric
    monitored = False
    for i, (label, series) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        if "train/loss" in series:
            ep, val = zip(*series["train/loss"], strict=True)
            ax_loss.plot([e + 1 for e in ep], val, color=colour, label=label)
        key = chosen[label]
        if key is None:
            continue
        ep, val = zip(*series[key], strict=True)
        x = [e + 1 for e in ep]
        if key.startswith("test_monitor/"):
            monitored = True
            ax_metric.plot(x, val, color=colour, linestyle="--", marker=".", label=f"{label} (test monitor)")
        else:
            ax_metric.plot(x, val, color=colour, marker="." if len(x) < 40 else None, label=label)
            if key.startswith("valid/"):
                best = int(np.argmax(val))
                ax_metric.plot([x[best]], [val[best]], marker="*", markersize=13, color=colour,
                               markeredgecolor="black", linestyle="none")
    ax_loss.set_xlabel("epochs trained")
    ax_loss.set_ylabel("training loss (per epoch)")
    ax_loss.set_title("training loss")
    ax_metric.set_xlabel("epochs trained")
    ax_metric.set_ylabel(bare)
    kinds = {k.split("/", 1)[0] for k in chosen.values() if k}
    parts = []
    if "valid" in kinds:
        parts.append(f"validation {bare} (★ best epoch)")
    if monitored:
        parts.append(("dashed: " if parts else f"{bare}: ") + "test-set monitoring, not model selection")
    ax_metric.set_title("\n".join(parts) or metric, fontsize=10)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.tight_layout()
    return _save(fig, out, dpi)


def plot_metric_bars(names: Sequence[str], metrics: Sequence[str], mean: np.ndarray, lo: np.ndarray,
                     hi: np.ndarray, out: str | Path, p_holm: np.ndarray | None = None, baseline: str | None = None,
                     alpha: float = 0.05, confidence: float = 0.95, title: str | None = None,
                     dpi: int = 120) -> Path:
    """Grouped bars of test metrics (one group per metric, one bar per run) with confidence-interval whiskers.

    Bars whose Holm-corrected p-value against the baseline is below ``alpha`` carry a star above the whisker.

    Args:
        names: run labels (the legend), baseline included.
        metrics: metric names (the x groups).
        mean: metric means per run.
        lo: lower interval bounds.
        hi: upper interval bounds.
        out: the PNG path.
        p_holm: adjusted p-values against the baseline (NaN for the baseline), or None for no stars.
        baseline: the baseline's label, marked in the legend and named in the title's note on the stars.
        alpha: the significance level of the stars.
        confidence: the coverage of the intervals, named in the default title.
        title: the figure title (by default it names the interval and the stars).
        dpi: resolution of the PNG.

    Shapes:
        mean, lo, hi, p_holm: ``[len(names), len(metrics)]``.
    """
    mean, lo, hi = (np.asarray(x, dtype=np.float64) for x in (mean, lo, hi))
    r, m = len(names), len(metrics)
    if mean.shape != (r, m) or lo.shape != (r, m) or hi.shape != (r, m):
        raise ValueError(f"mean, lo and hi must be [{r}, {m}], got {mean.shape}, {lo.shape}, {hi.shape}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 + m * (0.45 * r + 0.6)), 4.8))
    width = 0.8 / r
    x = np.arange(m)
    for i, name in enumerate(names):
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, mean[i], width * 0.92, label=f"{name} (baseline)" if name == baseline else name,
               yerr=np.vstack([mean[i] - lo[i], hi[i] - mean[i]]), capsize=3, error_kw={"elinewidth": 1.2})
        if p_holm is not None:
            for j in range(m):
                if np.isfinite(p_holm[i, j]) and p_holm[i, j] < alpha:
                    ax.annotate("*", (pos[j], hi[i, j]), ha="center", va="bottom", fontsize=13)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel("test metric (mean over users)")
    top = float(np.max(hi)) if hi.size else 0.0
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    if title is None:
        title = f"test metrics; whiskers: {confidence:.0%} bootstrap CI over users"
        if p_holm is not None:
            title += f"\n*: Holm-corrected paired p < {alpha:g}" + (f" vs {baseline}" if baseline else "")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, ncols=min(r, 4), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    return _save(fig, out, dpi)


def plot_tradeoff(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], out: str | Path, *,
                  xlabel: str, ylabel: str, log_base: float | None = 10, panel_size: tuple[float, float] = (5.5, 4),
                  legend_fontsize: float | None = None, dpi: int = 120, front: str | None = None,
                  legend_outside: bool = False) -> Path:
    """Quality against a cost (parameters, bytes per item, dimensions): one panel per key, one line per series.

    Points of a series are joined in order of cost, so a series traces its model family's trade-off curve (a
    Pareto plot when the families are compared at the same budgets).

    Args:
        panels: panel title → series label → ``(cost, quality)`` points; a series without points is left out.
        out: the PNG path.
        xlabel: the cost axis label.
        ylabel: the quality axis label.
        log_base: base of the logarithmic cost axis, or None for a linear one.
        panel_size: width and height of one panel, in inches.
        legend_fontsize: legend text size (matplotlib's default when None).
        dpi: resolution of the PNG.
        front: the label of a series drawn as a dashed black step line under the others (a Pareto front).
        legend_outside: put the legend right of the axes (many series would hide the points).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(panel_size[0] * max(1, len(panels)), panel_size[1]),
                             squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items(), strict=False):
        # More series than colours: the marker cycles on a different period, so no two series look the same.
        markers = itertools.cycle("osD^v<>pP*Xh")
        for label, pts in series.items():
            if pts and label == front:
                xs, ys = zip(*sorted(pts), strict=True)
                ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, label=label, zorder=1)
            elif pts:
                xs, ys = zip(*sorted(pts), strict=True)
                ax.plot(xs, ys, marker=next(markers), label=label, zorder=2)
        if log_base is not None:
            ax.set_xscale("log", base=log_base)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and legend_outside:
            ax.legend(fontsize=legend_fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    return _save(fig, out, dpi)
