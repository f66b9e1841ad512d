"""Full-ranking test evaluation at paper scale: every Gowalla test user (29,858) over all 40,981 items.

Times :func:`recsys.metrics.evaluate.evaluate` (top-20 over every item, training items excluded, all metrics) for a
finished run (``--run-dir``), or for a 64-wide random MF model bound to Gowalla when no run is given, and reports
the evaluation's wall time and the process's peak RSS before and after it (``ru_maxrss``).

    OMP_NUM_THREADS=1 python scripts/bench_eval_gowalla.py --path ../shared/datasets/gowalla [--run-dir RUN]
"""

from __future__ import annotations

import argparse
import resource
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default="../shared/datasets/gowalla", help="Gowalla train.txt/test.txt directory.")
    p.add_argument("--run-dir", default=None, help="A finished run to evaluate (default: a random 64-d MF).")
    p.add_argument("--chunk-size", type=int, default=None, help="Users per scoring chunk (default: memory budget).")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()

    import torch

    from recsys.metrics.evaluate import evaluate

    if a.run_dir:
        from recsys.runs import Run

        run = Run.open(a.run_dir)
        data = run.data()
        model = run.recommender(data)
        what = f"run {a.run_dir}"
    else:
        from recsys.data.prepared import prepare
        from recsys.datasets import load_dataset
        from recsys.encoders import MatrixFactorization
        from recsys.recommender import EmbeddingRecommender
        from recsys.scorers import DotScorer

        data = prepare(load_dataset("benchmark-txt", a.path))
        torch.manual_seed(0)
        encoder = MatrixFactorization(dim=64)
        encoder.bind(data)
        model = EmbeddingRecommender(encoder, DotScorer()).eval()
        what = "random MF, dim 64"
    before = _rss_mib()
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        m = evaluate(model, data, "test", (20,), chunk_size=a.chunk_size)
        times.append(time.perf_counter() - t)
    users = int((data.csr("test").getnnz(axis=1) > 0).sum())
    print(f"{what}: {users} test users x {data.n_items} items, torch threads {torch.get_num_threads()}")
    print(f"evaluate(test, k=20): best {min(times):.2f} s, runs " + ", ".join(f"{t:.2f}" for t in times)
          + f"; recall@20 {m['recall@20']:.4f}")
    print(f"peak RSS: {before:.0f} MiB before evaluation, {_rss_mib():.0f} MiB after "
          f"(+{_rss_mib() - before:.0f} MiB)")


if __name__ == "__main__":
    main()
