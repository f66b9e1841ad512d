"""Benchmark the graph encoders: per-epoch training time on P1 against RecBole, and a Gowalla-size scaling check.

Per-epoch time is forward + backward + optimizer step over one P1 training epoch (ml-latest-small, the
datamodule's 80/10/10 split, batch 2048, one uniform negative as RecBole), batches built inside the timed loop as
RecBole's loader does. RecBole 1.2.1 runs in its own venv through ``../shared/peers/recbole_p1.sh MODEL --epochs
N``; its printed per-epoch training times are parsed. Both sides run with the same thread count (``--threads``,
which also sets ``OMP_NUM_THREADS`` for RecBole): on a shared machine, more threads than free cores slows both
down several-fold.

Wall time on a shared machine swings with other people's jobs, so CPU time is reported too: ours per epoch from
``time.process_time``; RecBole's as the difference of its process CPU time between an N-epoch and a 1-epoch run,
divided by N - 1 (both load the data and validate once, so only training epochs remain).

A micro-benchmark first compares three propagation layers forward + backward: torch's COO product (RecBole's),
torch's CSR product with its default backward, and our int32 CSR with the custom autograd functions.

The scaling check trains LightGCN for one epoch and ranks every item for every test user on a synthetic graph of
Gowalla's size (29,858 users, 40,981 items, ~1.03M interactions), reporting wall times and the peak resident
memory (``resource.getrusage``), which must stay under 24 GiB.

Usage::

    .venv/bin/python scripts/bench_graph.py                       # ours, RecBole side by side, then scaling
    .venv/bin/python scripts/bench_graph.py --no-recbole --models lightgcn --epochs 3
    .venv/bin/python scripts/bench_graph.py --only-scaling
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECBOLE = ROOT.parent / "shared" / "peers" / "recbole_p1.sh"
RECBOLE_NAMES = {"lightgcn": "LightGCN", "ngcf": "NGCF", "ngcf_official": "NGCF"}


def make_encoder(name: str, node_dropout: float = 0.1):
    from recsys.encoders import NGCF, LightGCN, OfficialNGCF, PaperNGCF

    if name == "lightgcn":
        return LightGCN(dim=64, n_layers=3)
    if name == "ngcf":
        return NGCF(dim=64, n_layers=3, variant=PaperNGCF(), node_dropout=node_dropout)
    if name == "ngcf_official":
        return NGCF(dim=64, n_layers=3, variant=OfficialNGCF(), node_dropout=node_dropout)
    raise ValueError(f"unknown model {name!r}")


def config_regularisation(name: str) -> dict[str, float]:
    """``configs/<name>.yaml``'s regulariser: the batch-row penalty (reg_weight) and Adam's weight_decay."""
    import yaml

    model = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["model"]["init_args"]
    return {"reg_weight": float(model.get("reg_weight", 0.0)),
            "weight_decay": float(model.get("optimizer", {}).get("init_args", {}).get("weight_decay", 0.0))}


def train_epochs(encoder, data, epochs: int, batch_size: int = 2048, reg_weight: float = 1e-4,
                 weight_decay: float = 0.0, seed: int = 2026) -> list[tuple[float, float]]:
    """Wall and CPU seconds per training epoch (batching, sampling, forward, backward, Adam step).

    Trained as ``recsys fit`` trains: ``RecModel`` (BPR, dot scorer) in a Lightning ``Trainer``, validation off.

    Shapes:
        -> [epochs] (wall s, CPU s)
    """
    from functools import partial

    import lightning as L

    from recsys.data.datamodule import Loader
    from recsys.model import RecModel
    from recsys.testing.training import fit_tiny

    class EpochClock(L.Callback):
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.times.append((time.perf_counter() - self._t, time.process_time() - self._c))

    model = RecModel(encoder, reg_weight=reg_weight,
                     optimizer=partial(torch.optim.Adam, lr=1e-3, weight_decay=weight_decay, fused=True))
    clock = EpochClock()
    fit_tiny(model, data, Loader(batch_size=batch_size), max_epochs=epochs, seed=seed, callbacks=[clock])
    return clock.times


def _recbole_run(model: str, epochs: int, threads: int | None, timeout: int) -> tuple[list[float], float]:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # RecBole logs to stderr and writes log folders into its working directory: run it in a scratch one.
    with tempfile.TemporaryDirectory(prefix="bench-recbole-") as cwd:
        out = subprocess.run([str(RECBOLE), model, "--epochs", str(epochs)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout, cwd=cwd).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return [float(s) for s in re.findall(r"epoch \d+ training \[time: ([\d.]+)s", out)], cpu


def recbole_epochs(model: str, epochs: int, threads: int | None, timeout: int) -> tuple[list[float], float]:
    """RecBole's per-epoch training wall seconds for ``model`` on P1 and its CPU seconds per training epoch.

    The CPU figure is the difference between a run of ``epochs`` epochs and a run of one epoch, divided by
    ``epochs - 1``: both load the data once and validate once (RecBole validates every ``min(5, epochs)``
    epochs), so only training epochs remain. Empty/NaN when RecBole could not run.
    """
    if not RECBOLE.exists():
        print(f"  RecBole runner not found at {RECBOLE}", flush=True)
        return [], float("nan")
    try:
        walls, cpu_n = _recbole_run(model, epochs, threads, timeout)
        _, cpu_1 = _recbole_run(model, 1, threads, timeout) if epochs > 1 else ([], 0.0)
    except (subprocess.TimeoutExpired, OSError) as e:
        print(f"  RecBole {model} failed: {e}", flush=True)
        return [], float("nan")
    return walls, (cpu_n - cpu_1) / (epochs - 1) if epochs > 1 and walls else float("nan")


def spmm_microbench(data, repeats: int = 20) -> None:
    """Three propagation layers forward and backward: our CSR product and autograd function vs torch's defaults."""
    from recsys.encoders.graph import bipartite_adjacency, sparse_polynomial, spmm

    adj = bipartite_adjacency(data.train)
    a, at = adj.matrices()
    a64 = torch.sparse_csr_tensor(a.crow_indices().long(), a.col_indices().long(), a.values(), a.shape)
    coo = a64.to_sparse_coo().coalesce()
    x = torch.randn(adj.n, 64, requires_grad=True)
    g = torch.randn(adj.n, 64)

    def layers(mm):
        h = x
        for _ in range(3):
            h = mm(h)
        h.backward(g)

    cases = {"torch COO (RecBole's)": lambda: layers(lambda h: torch.sparse.mm(coo, h)),
             "torch CSR int64, default backward": lambda: layers(lambda h: a64 @ h),
             "CSR int32 + SpMM (NGCF)": lambda: layers(lambda h: spmm(a, at, h)),
             "CSR int32 + SparsePolynomial (LightGCN)":
                 lambda: sparse_polynomial(a, at, x, (0.25, 0.25, 0.25, 0.25)).backward(g)}
    res = {}
    for _ in range(2):  # interleaved rounds, so a burst of load on a shared machine hits every case alike
        for name, f in cases.items():
            f()
            t = time.process_time()
            for _ in range(repeats // 2):
                f()
            res.setdefault(name, []).append((time.process_time() - t) / (repeats // 2) * 1e3)
    base = min(res["torch CSR int64, default backward"])
    for name, ts in res.items():
        print(f"[spmm] 3 layers fwd+bwd, {name:<40} {min(ts):7.1f} ms CPU ({base / min(ts):.1f}x vs default CSR)",
              flush=True)


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gowalla_like(n_users: int = 29858, n_items: int = 40981, n_interactions: int = 1_080_000, seed: int = 0):
    """A PreparedData with Gowalla's shape: power-law item popularity and user activity, random 80/10/10.

    ``n_interactions`` draws are made; repeated pairs are merged, leaving about 1.03M distinct interactions
    (Gowalla: 29,858 users, 40,981 items, 1,027,370 interactions).

    Built directly (not with ``generate_synthetic``, whose text tables and dense affinity blocks are not what this
    check measures) so it takes seconds.
    """
    import scipy.sparse as sp

    from recsys.data.prepared import PreparedData
    from recsys.data.splits import TEST, TRAIN, VALID
    from recsys.data.vocab import Vocabulary

    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.5, n_users) + 1.0
    counts = np.maximum(np.round(activity / activity.sum() * n_interactions), 10).astype(np.int64)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = np.repeat(np.arange(n_users), counts)
    items = rng.permutation(n_items)[rng.choice(n_items, size=len(users), p=pop / pop.sum())]
    m = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    coo = m.tocoo()
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    u = rng.random(len(users))
    labels = np.where(u < 0.8, TRAIN, np.where(u < 0.9, VALID, TEST)).astype(np.int8)
    return PreparedData(Vocabulary.from_values(np.arange(n_users), "user"),
                        Vocabulary.from_values(np.arange(n_items), "item"), users, items, labels, name="gowalla-like")


def scaling_check() -> None:
    from recsys.encoders import LightGCN
    from recsys.metrics.evaluate import evaluate
    from recsys.metrics.ranking import ranking_metrics  # noqa: F401  (imported for its one-time cost)

    t = time.perf_counter()
    data = gowalla_like()
    print(f"[scaling] {data.summary()} built in {time.perf_counter() - t:.1f} s", flush=True)
    enc = LightGCN(dim=64, n_layers=3)
    t = time.perf_counter()
    enc.bind(data)
    print(f"[scaling] LightGCN bind (adjacency, {enc.adj.nnz} non-zeros) {time.perf_counter() - t:.1f} s", flush=True)
    ((wall, cpu),) = train_epochs(enc, data, 1)
    print(f"[scaling] one LightGCN training epoch: {wall:.1f} s wall, {cpu:.1f} s CPU; peak RSS "
          f"{peak_rss_gib():.2f} GiB", flush=True)

    from recsys.recommender import EmbeddingRecommender
    from recsys.scorers import DotScorer

    t = time.perf_counter()
    metrics = evaluate(EmbeddingRecommender(enc, DotScorer()).eval(), data, "test")
    print(f"[scaling] full-ranking test evaluation ({len(np.unique(data.users[data.labels == 2]))} users x "
          f"{data.n_items} items): {time.perf_counter() - t:.1f} s, ndcg@20 {metrics['ndcg@20']:.4f}", flush=True)
    peak = peak_rss_gib()
    print(f"[scaling] peak RSS {peak:.2f} GiB ({'OK' if peak < 24 else 'OVER'} the 24 GiB limit)", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="lightgcn,ngcf,ngcf_official")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per model (ours)")
    p.add_argument("--recbole-epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both sides (0 = leave the default)")
    p.add_argument("--node-dropout", type=float, default=0.1,
                   help="our NGCF's node dropout (configs: 0.1; RecBole's NGCF default: 0.0, for like-for-like work)")
    p.add_argument("--no-recbole", action="store_true")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--only-scaling", action="store_true")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ml-latest-small"))
    p.add_argument("--recbole-timeout", type=int, default=3600)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"[bench] torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs", flush=True)
    if not a.only_scaling:
        from recsys.data.datamodule import RecDataModule

        data = RecDataModule(dataset="ml-latest-small", path=a.data).prepare()
        print(f"[bench] {data.summary()}", flush=True)
        spmm_microbench(data)
        rows, recbole = [], {}
        for name in a.models.split(","):
            torch.manual_seed(0)
            enc = make_encoder(name, a.node_dropout)
            enc.bind(data)
            ours = train_epochs(enc, data, a.epochs, **config_regularisation(name))
            wall, cpu = (statistics.median(t[i] for t in ours) for i in (0, 1))
            print(f"[bench] ours {name}: wall " + ", ".join(f"{t[0]:.2f}" for t in ours) + " s/epoch, CPU "
                  + ", ".join(f"{t[1]:.2f}" for t in ours) + f" (medians {wall:.2f} / {cpu:.2f})", flush=True)
            model = RECBOLE_NAMES[name]
            if not a.no_recbole and model not in recbole:  # both NGCF variants compare with RecBole's one NGCF
                walls, rb_cpu = recbole_epochs(model, a.recbole_epochs, a.threads or None, a.recbole_timeout)
                rb_wall = statistics.mean(walls) if walls else float("nan")
                recbole[model] = (rb_wall, rb_cpu)
                print(f"[bench] RecBole {model}: wall " + ", ".join(f"{t:.2f}" for t in walls)
                      + f" s/epoch (mean {rb_wall:.2f}), CPU {rb_cpu:.2f} s/epoch", flush=True)
            rows.append((name, wall, cpu, *recbole.get(model, (float("nan"), float("nan")))))
        print("\nper training epoch on P1, batch 2048, "
              f"{torch.get_num_threads()} thread(s): wall s and CPU s (ratio = ours / RecBole)")
        print("model           ours wall  RecBole wall  ratio   ours CPU  RecBole CPU  ratio")
        for name, wall, cpu, rb_wall, rb_cpu in rows:
            print(f"{name:<15} {wall:>9.2f}  {rb_wall:>12.2f}  {wall / rb_wall:>5.2f}  {cpu:>9.2f}  {rb_cpu:>11.2f}  "
                  f"{cpu / rb_cpu:>5.2f}")
    if not a.no_scaling:
        scaling_check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
