"""Metrics as text: the small table every command prints."""

from __future__ import annotations

__all__ = ["METRIC_ORDER", "format_metrics"]

#: the order of metric rows in printed tables.
METRIC_ORDER = ("recall", "precision", "ndcg", "mrr", "hit", "map")


def format_metrics(metrics: dict[str, float]) -> str:
    """A small text table: one row per metric, one column per cut-off."""
    ks = sorted({int(k.split("@")[1]) for k in metrics if "@" in k})
    names = [m for m in METRIC_ORDER if any(k.startswith(m + "@") for k in metrics)]
    lines = ["metric     " + "".join(f"{'@' + str(k):>10}" for k in ks)]
    for m in names:
        lines.append(f"{m:<11}" + "".join(f"{metrics.get(f'{m}@{k}', float('nan')):>10.4f}" for k in ks))
    return "\n".join(lines)
