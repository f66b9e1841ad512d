"""A user's concept profile and why their top items were chosen, from a trained SESA run.

Reads only the run directory (stored explicit tables, concept names, item side table): no model code, no LM.

    .venv/bin/python scripts/sesa_report.py --run-dir runs/sesa/p1 --user 1 --k 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.runs import Run  # noqa: E402
from recsys.scoring.explain import top_concepts  # noqa: E402


def report(run_dir: Path, user, k: int = 10, n_concepts: int = 10) -> str:
    """The text report for one external user ID."""
    run = Run.open(run_dir)
    payload = run.payload
    if not payload.concepts or payload.tables is None:
        raise SystemExit(f"{run_dir} is not an explicit-concept (SESA) run: no concept names stored")
    names = payload.concepts
    q, items = payload.tables
    data = run.data()
    users, item_vocab = data.user_vocab, data.item_vocab
    u = int(users.encode(np.asarray([user]).astype(users.ids.dtype))[0])
    train_users, train_items = run.train_pairs()
    seen = train_items[train_users == u].copy()
    table = data.item_table
    title = (lambda i: str(table["title"].iloc[i])) if table is not None and "title" in table else str

    lines = [f"user {user} ({len(seen)} training items)", "", "concept profile (share of the user's activation mass):"]
    prof = q[u] / q[u].sum().clamp_min(1e-12)
    for c in torch.topk(prof, min(n_concepts, len(names))).indices.tolist():
        lines.append(f"  {names[c]:<28} {prof[c]:6.1%}")
    scores = q[u] @ items.T
    scores[torch.from_numpy(seen)] = float("-inf")
    top = torch.topk(scores, k).indices
    idx, shares = top_concepts(q[u].expand(len(top), -1), items[top], names)
    lines += ["", f"top {k} items and why (concept: share of the score):"]
    for r, (i, ci, sh) in enumerate(zip(top.tolist(), idx, shares, strict=True), 1):
        why = ", ".join(f"{names[c]} {s:.0%}" for c, s in zip(ci, sh, strict=True) if c >= 0)
        lines.append(f"  {r:>2}. {title(i)[:40]:<40} [{item_vocab.decode([i])[0]}] score {scores[i]:.3f}  <- {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--user", required=True, help="External user ID.")
    p.add_argument("--k", type=int, default=10)
    a = p.parse_args(argv)
    print(report(Path(a.run_dir), a.user, a.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
