"""Pictures of a run: the learning curve from its CSV log (matplotlib, imported only when drawing)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["read_log", "plot_learning_curve"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsys.io_utils import atomic_path

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
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
