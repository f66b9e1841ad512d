"""Explanation faithfulness of a trained SESA run (issue 7, acceptance 2).

For every test hit (a held-out test item in the user's top-k, train and valid items excluded, as in
``recsys evaluate``), the top contributing concept of the score is compared with the item's true concepts: its
declared genres/tags (the run's own concept vocabulary, rebuilt from the run's config). On the synthetic dataset
it also reports agreement with the generator's ground truth: the item's generator concepts, and the user's
``true_concepts`` against the top-3 concepts of their profile.

    .venv/bin/python scripts/sesa_faithfulness.py --run-dir runs/sesa/p1 [--k 20] [--out faithfulness.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.config import build_component  # noqa: E402
from recsys.data.concepts import Concepts, clean_concept  # noqa: E402
from recsys.runs import Run  # noqa: E402
from recsys.scoring.topk import gemm_score_fn, topk  # noqa: E402


def faithfulness(run_dir: Path, k: int = 20) -> dict:
    run = Run.open(run_dir)
    payload = run.payload  # checks config.yaml against the hash recorded at fit
    if not payload.concepts or payload.tables is None:
        raise SystemExit(f"{run_dir} is not an explicit-concept (SESA) run: no concept names stored")
    names = payload.concepts
    q, items = payload.tables
    data = run.data()
    enc_args = run.config_dict()["model"]["init_args"]["encoder"]["init_args"]
    vocab = build_component(enc_args["concepts"], Concepts, "the run's concepts spec").build(data)
    if vocab.names != names:
        raise SystemExit("the rebuilt concept vocabulary differs from the stored one")
    test = data.csr("test")
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ranked, _ = topk(gemm_score_fn(q, items), users, data.n_items, k, data.exclude_for("test"))
    hu, hi = [], []
    for u, row in zip(users, ranked, strict=True):
        held = set(test.indices[test.indptr[u]:test.indptr[u + 1]].tolist())
        for i in row:
            if i in held:
                hu.append(u)
                hi.append(i)
    hu, hi = np.asarray(hu), np.asarray(hi)
    contrib = q[torch.from_numpy(hu)] * items[torch.from_numpy(hi)]
    top = contrib.argmax(1).numpy()
    declared = vocab.items.toarray() > 0
    faithful = declared[hi, top]
    has_any = declared[hi].any(1)
    popular = int(np.argmax(declared.sum(0)))
    out = {"run": str(run.path), "k": k, "test_users": int(len(users)), "hits": int(len(hi)),
           "faithful_share": float(faithful.mean()) if len(hi) else float("nan"),
           "hits_with_declared_concepts": float(has_any.mean()) if len(hi) else float("nan"),
           "faithful_share_of_hits_with_declared": float(faithful[has_any].mean()) if has_any.any() else float("nan"),
           "baseline_most_frequent_concept": {"concept": names[popular],
                                              "share": float(declared[hi, popular].mean())},
           "top1_share_of_score_mean": float((contrib.max(1).values / contrib.sum(1).clamp_min(1e-12)).mean()),
           "item_active_dims_mean": float((items > 0).sum(1).float().mean()),
           "user_active_dims_mean": float((q > 0).sum(1).float().mean()),
           "n_concepts": len(names)}
    if data.name == "synthetic" and data.item_table is not None and "concepts" in data.item_table:
        index = {c: j for j, c in enumerate(names)}
        truth = [{index[c] for c in map(clean_concept, cs) if c in index} for c in [data.item_table["concepts"]]
                 for cs in c]
        out["generator_item_concept_agreement"] = float(np.mean([top[j] in truth[i] for j, i in enumerate(hi)]))
        if data.user_table is not None and "true_concepts" in data.user_table:
            prof = torch.topk(q, 3, dim=1).indices.numpy()
            true_u = [{index.get(clean_concept(c), -1) for c in cs} for cs in data.user_table["true_concepts"]]
            out["generator_user_profile_precision@3"] = float(np.mean([len(set(prof[u]) & true_u[u]) / 3
                                                                        for u in range(data.n_users)]))
            rng = np.random.default_rng(0)
            out["random_user_profile_precision@3"] = float(np.mean([
                len(set(rng.choice(len(names), 3, replace=False)) & true_u[u]) / 3 for u in range(data.n_users)]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = faithfulness(Path(a.run_dir), a.k)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        from recsys.io_utils import atomic_write_text

        atomic_write_text(a.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
