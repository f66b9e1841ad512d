"""Benchmark the graph encoders' CPU kernels on Gowalla: one sparse product, and whole training steps.

1. One product ``A @ X`` of the normalised bipartite adjacency (70,839 nodes, 1,620,256 non-zeros) with a
   ``[70839, 64]`` float32 table: ``torch.sparse.mm`` (int64 CSR), the previous ``sparse_mm`` (torch ``addmm`` into
   an uninitialised output, int32 CSR), scipy, and the numba kernel (:mod:`recsys.encoders.graph_kernels`); then
   the row-restricted products of one batch's rows (``A[rows] X`` and the scatter ``A[rows]ᵀ G``).
2. Training steps, forward + backward + Adam (``fused=True``) step, as ``RecModel.training_step`` computes them
   (BPR, dot scores, ``reg_weight`` × the step penalty / batch): LightGCN (3 layers, d 64, batch 2048, one
   uniform negative) and NGCF in the authors' form (``OfficialNGCF``, 3 layers, d 64, batch 1024, one negative,
   node and message dropout 0.1), each in four settings side by side:

   - ``torch``: the kernels off (``graph_kernels.disabled()``, as ``RECSYS_NO_NUMBA=1``): torch's products over
     the whole graph, autograd's NGCF layer: the code before the kernels;
   - ``+kernel``: the numba CSR products, still full-graph (``row_restriction(False)``), torch element-wise ops;
   - ``+rows``: plus the row-restricted last layer (and NGCF's hop-restricted middle layer);
   - ``+fused``: plus the fused element-wise kernels (NGCF's layer, the dropout masks): everything, the default.

Settings are interleaved step by step (one model per encoder; timings do not depend on the weights), so load
from other jobs on a shared machine hits them alike; the minimum and the median over rounds are printed, wall and
CPU (``time.process_time``) time. The load average is printed too: on a shared core the wall times of
memory-bound products swing by 2-4x with other people's jobs, and torch's product (no prefetching) suffers most.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_spmm.py
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_spmm.py --rounds 20 --models lightgcn
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "gowalla"


def load(path: str):
    from recsys.data.prepared import SplitSpec, prepare
    from recsys.datasets import load_dataset

    return prepare(load_dataset("benchmark-txt", path), split=SplitSpec(method="predefined"))


def clock(cases: dict, rounds: int, reps: int = 3) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds of each case, interleaved over rounds, after one warm-up call each."""
    for f in cases.values():
        f()
    out = {k: ([], []) for k in cases}
    for _ in range(rounds):
        for k, f in cases.items():
            for _ in range(reps):
                t, c = time.perf_counter(), time.process_time()
                f()
                out[k][0].append(time.perf_counter() - t)
                out[k][1].append(time.process_time() - c)
    return out


def batch_rows(data, batch) -> torch.Tensor:
    return torch.unique(torch.cat([batch.users, batch.items.reshape(-1) + data.n_users]))


def product_bench(data, batch, rounds: int) -> None:
    import scipy.sparse as sp

    from recsys.encoders import graph_kernels as K
    from recsys.encoders.graph import bipartite_adjacency, sparse_mm

    adj = bipartite_adjacency(data.train)
    a, _ = adj.matrices()
    a64 = torch.sparse_csr_tensor(a.crow_indices().long(), a.col_indices().long(), a.values(), a.shape)
    s = sp.csr_matrix((adj.values.numpy(), adj.col.numpy(), adj.crow.numpy()), shape=a.shape)
    x = torch.randn(adj.n, 64)
    xn = x.numpy()
    rows = batch_rows(data, batch)
    g = torch.randn(len(rows), 64)

    def old_sparse_mm():
        with K.disabled():
            return sparse_mm(a, x)

    ref = torch.sparse.mm(a64.double(), x.double())
    err = float((K.csr_mm(adj.crow, adj.col, adj.values, x).double() - ref).abs().max() / ref.abs().max())
    nnz_rows = int((adj.crow[rows + 1] - adj.crow[rows]).sum())
    print(f"[product] A: {adj.n} nodes, {adj.nnz} non-zeros; X [{adj.n}, 64] float32; numba vs float64 "
          f"max rel. error {err:.1e}; batch rows {len(rows)} holding {nnz_rows} non-zeros "
          f"({nnz_rows / adj.nnz:.1%})", flush=True)
    cases = {
        "torch.sparse.mm (CSR int64)": lambda: torch.sparse.mm(a64, x),
        "torch addmm (CSR int32, before)": old_sparse_mm,
        "scipy": lambda: s @ xn,
        "numba kernel": lambda: K.csr_mm(adj.crow, adj.col, adj.values, x),
        "numba A[rows] X (batch rows)": lambda: K.csr_mm_rows(adj.crow, adj.col, adj.values, x, rows),
        "numba A[rows]^T G scatter": lambda: K.csr_scatter_rows(adj.crow, adj.col, adj.values, g, rows, adj.n),
    }
    res = clock(cases, rounds)
    base = min(res["torch addmm (CSR int32, before)"][1])
    for name, (wall, cpu) in res.items():
        print(f"[product] {name:<34} wall min {min(wall) * 1e3:6.1f} med {statistics.median(wall) * 1e3:6.1f} ms | "
              f"CPU min {min(cpu) * 1e3:6.1f} ms ({base / min(cpu):4.1f}x vs before)", flush=True)


def make_model(name: str, data):
    from recsys.encoders import NGCF, LightGCN, OfficialNGCF
    from recsys.model import RecModel

    torch.manual_seed(0)
    if name == "lightgcn":
        model = RecModel(LightGCN(dim=64, n_layers=3), reg_weight=1e-4)
    else:
        model = RecModel(NGCF(dim=64, n_layers=3, variant=OfficialNGCF(), node_dropout=0.1, message_dropout=0.1),
                         reg_weight=1e-5)
    model.bind(data)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    return model, opt


def train_step(model, opt, batch) -> None:
    """``RecModel.training_step``'s loss (without Lightning's logging), its backward and the Adam step."""
    step = model.negatives.embed(model.encoder, batch)
    loss = model.loss(*model.negatives.score(model.scorer, batch, step))
    loss = loss + model.reg_weight * (step.out.penalty / len(batch))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@contextlib.contextmanager
def setting(kernels: bool, rows: bool, fused: bool):
    from recsys.encoders import graph_kernels as K
    from recsys.encoders.graph import row_restriction

    with contextlib.ExitStack() as st:
        if not kernels:
            st.enter_context(K.disabled())
        st.enter_context(row_restriction(rows))
        if not fused:
            st.enter_context(mock.patch.object(K, "usable_dense", lambda *a: False))
        yield


SETTINGS = {"torch": (False, False, False), "+kernel": (True, False, False), "+rows": (True, True, False),
            "+fused": (True, True, True)}


def step_bench(name: str, data, batch_size: int, rounds: int) -> None:
    from recsys.data.datamodule import Loader, TrainBatches

    model, opt = make_model(name, data)
    loader = TrainBatches(data, Loader(batch_size=batch_size, num_negatives=1), seed=0)
    batches = [loader[i] for i in range(4)]
    for s in SETTINGS.values():  # warm-up (compiles or loads the kernels)
        with setting(*s):
            train_step(model, opt, batches[0])
    times = {k: ([], []) for k in SETTINGS}
    for r in range(rounds):
        for k, s in SETTINGS.items():
            with setting(*s):
                t, c = time.perf_counter(), time.process_time()
                train_step(model, opt, batches[1 + r % 3])
                times[k][0].append(time.perf_counter() - t)
                times[k][1].append(time.process_time() - c)
    base = statistics.median(times["torch"][1])
    for k, (wall, cpu) in times.items():
        print(f"[step] {name:<14} batch {batch_size}  {k:<8} wall min {min(wall) * 1e3:6.1f} med "
              f"{statistics.median(wall) * 1e3:6.1f} ms | CPU min {min(cpu) * 1e3:6.1f} med "
              f"{statistics.median(cpu) * 1e3:6.1f} ms ({base / statistics.median(cpu):4.1f}x)", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--models", default="lightgcn,ngcf_official")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-products", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"[bench] torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    data = load(a.data)
    print(f"[bench] {data.n_users} users, {data.n_items} items, {data.train.nnz} training interactions", flush=True)
    if not a.no_products:
        from recsys.data.datamodule import Loader, TrainBatches

        batch = TrainBatches(data, Loader(batch_size=2048, num_negatives=1), seed=0)[0]
        product_bench(data, batch, a.rounds)
    for name in a.models.split(","):
        step_bench(name, data, 2048 if name == "lightgcn" else 1024, a.rounds)
    print(f"[bench] load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
