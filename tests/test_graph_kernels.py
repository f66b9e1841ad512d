"""The numba graph kernels: products against torch's, the row-restricted training step against the full one, the
fused NGCF layer and dropout mask against their torch forms, and the fallback without numba."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recsys.data.batch import Batch
from recsys.encoders import NGCF, LightGCN, OfficialNGCF, PaperNGCF
from recsys.encoders import graph_kernels as K
from recsys.encoders.graph import (
    OfficialNGCFLayer,
    bipartite_adjacency,
    dropout_mask,
    row_restriction,
    sparse_mm,
    sparse_polynomial,
    sparse_polynomial_rows,
    spmm_rows,
)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not K.available(), reason="numba is not installed")]



@pytest.fixture(autouse=True)
def kernels_on():
    """The kernels on, whatever ``RECSYS_NO_NUMBA`` says for the rest of the suite (tests switch them off
    themselves to compare with the fallback)."""
    previous = K.set_enabled(True)
    yield
    K.set_enabled(previous)


DTYPES = [torch.float32, torch.float64]
WIDTHS = [1, 64, 65]


def random_csr(n: int, m: int, density: float, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A random CSR matrix (int32 indices) with some empty rows, and its dense float64 copy."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, m)) < density) * rng.standard_normal((n, m))
    dense[::7] = 0  # empty rows
    csr = sp.csr_matrix(dense)
    a = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int32)),
                                torch.from_numpy(csr.indices.astype(np.int32)),
                                torch.from_numpy(csr.data).to(dtype), (n, m))
    return a, dense


def parts(a: torch.Tensor):
    return a.crow_indices(), a.col_indices(), a.values()


def tol(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_kernels_match_torch_and_dense(dtype, width):
    a, dense = random_csr(53, 41, 0.15, dtype, seed=width)
    x = torch.randn(41, width, dtype=dtype)
    y = torch.randn(53, width, dtype=dtype)
    ref = torch.from_numpy(dense @ x.double().numpy()).to(dtype)
    with K.disabled():
        torch_out = sparse_mm(a, x)
    out = sparse_mm(a, x)  # the numba kernel
    torch.testing.assert_close(out, torch_out, **tol(dtype))
    torch.testing.assert_close(out, ref, **tol(dtype))
    assert (out[::7] == 0).all()  # empty rows
    # The fused Horner step s · (A X + c · Y).
    torch.testing.assert_close(K.csr_mm(*parts(a), x, y, 0.3, 2.0), 2.0 * (ref + 0.3 * y), **tol(dtype))
    # A row subset (duplicates, an empty row, any order) and the transposed scatter.
    rows = torch.tensor([5, 0, 7, 5, 52])
    torch.testing.assert_close(K.csr_mm_rows(*parts(a), x, rows), ref[rows], **tol(dtype))
    torch.testing.assert_close(K.csr_mm_rows(*parts(a), x, rows, y, -0.5, 3.0), 3.0 * (ref - 0.5 * y)[rows],
                               **tol(dtype))
    g = torch.randn(len(rows), width, dtype=dtype)
    expected = torch.from_numpy(dense[rows.numpy()].T @ g.double().numpy()).to(dtype)
    torch.testing.assert_close(K.csr_scatter_rows(*parts(a), g, rows, 41), expected, **tol(dtype))
    assert K.csr_mm_rows(*parts(a), x, rows[:0]).shape == (0, width)


def test_kernel_matches_torch_on_a_graph_to_float_rounding():
    train = sp.random(300, 200, density=0.05, random_state=0, format="csr")
    adj = bipartite_adjacency(train)
    a, _ = adj.matrices()
    x = torch.randn(adj.n, 64)
    with K.disabled():
        ref = sparse_mm(a, x)
    out = sparse_mm(a, x)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-6


def test_fallbacks_keep_torch_semantics():
    a, _ = random_csr(20, 20, 0.2, torch.float32)
    x = torch.randn(20, 8)
    assert K.usable(x, a.values())
    assert not K.usable(x.double(), a.values())  # mixed dtypes: torch's product decides
    assert not K.usable(x.half(), a.values().half())
    assert not K.usable(x.to(torch.int32), a.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not K.usable(x, a.values()) and not K.usable_dense(x)
    with K.disabled():
        assert not K.enabled() and not K.usable(x, a.values())
    assert K.enabled()


def test_env_var_turns_the_kernels_off_and_import_compiles_nothing():
    code = ("import sys, torch\n"
            "import recsys.encoders\n"
            "from recsys.encoders import graph_kernels as K\n"
            "from recsys.encoders.graph import bipartite_adjacency, sparse_mm\n"
            "assert 'numba' not in sys.modules, 'import recsys must not import numba'\n"
            "print(K.enabled())\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for value, expected in (("1", "False"), ("", "True")):
        env["RECSYS_NO_NUMBA"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


def test_kernels_without_intrinsics_give_the_same_products():
    # The fallback build (no llvm.prefetch, heap row buffer), used should an intrinsic not lower on some numba.
    code = ("import torch\n"
            "from recsys.encoders import graph_kernels as K\n"
            "K._intrinsics_ok = False\n"
            "a = (torch.rand(30, 20) < 0.2) * torch.randn(30, 20)\n"
            "c = a.to_sparse_csr()\n"
            "parts = c.crow_indices().int(), c.col_indices().int(), c.values()\n"
            "x, rows = torch.randn(20, 64), torch.tensor([3, 0, 29])\n"
            "torch.testing.assert_close(K.csr_mm(*parts, x), a @ x)\n"
            "torch.testing.assert_close(K.csr_mm_rows(*parts, x, rows), (a @ x)[rows])\n"
            "g = torch.randn(3, 64)\n"
            "torch.testing.assert_close(K.csr_scatter_rows(*parts, g, rows, 20), a[rows].T @ g)\n"
            "assert not K._intrinsics_ok\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fused_dropout_mask_equals_the_torch_form(p):
    like = torch.empty(0)
    torch.manual_seed(3)
    fused = dropout_mask((37, 11), p, like)
    with K.disabled():
        torch.manual_seed(3)
        ref = dropout_mask((37, 11), p, like)
    torch.testing.assert_close(fused, ref, rtol=0, atol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_official_ngcf_layer_equals_autograd(masked):
    torch.manual_seed(0)
    layer = OfficialNGCFLayer(8, 8)
    x, side = torch.randn(30, 8), torch.randn(30, 8)
    mask = dropout_mask((30, 8), 0.3, x) if masked else None
    weights = torch.randn(30, 8)
    results = []
    for disabled in (False, True):
        xs = [x.clone().requires_grad_(), side.clone().requires_grad_()]
        layer.zero_grad()
        if disabled:
            with K.disabled():
                out = layer(*xs, mask)
        else:
            out = layer(*xs, mask)
        (out * weights).sum().backward()
        results.append([out, *(t.grad for t in xs), *(q.grad.clone() for q in layer.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


# The row-restricted training step against the full one.

def graph_data(n_users: int, n_items: int, density: float, seed: int = 0):
    """Bindable data: a random training matrix with an inactive user and item."""
    rng = np.random.default_rng(seed)
    m = (rng.random((n_users, n_items)) < density).astype(np.float32)
    m[0] = 0
    m[:, -1] = 0
    return SimpleNamespace(n_users=n_users, n_items=n_items, train=sp.csr_matrix(m))


def make_batch(data, size: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, data.n_users, (size,), generator=g)
    users[1] = users[0]  # a duplicate user
    return Batch(users, torch.randint(0, data.n_items, (size, 2), generator=g))


def step_grads(enc, batch, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """BPR loss plus the step penalty, and the gradients of every parameter (dropouts drawn from ``seed``)."""
    torch.manual_seed(seed)
    out = enc(batch)
    scores = (out.query[:, None, :] * out.candidates).sum(-1)
    loss = -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean() + 1e-3 * out.penalty / len(batch.users)
    params = [p for p in enc.parameters() if p.requires_grad]
    return loss.detach(), list(torch.autograd.grad(loss, params))


def assert_same_step(enc, batch, rtol: float = 1e-5) -> None:
    loss, grads = step_grads(enc, batch)
    for mode in ("full", "torch"):
        if mode == "full":
            with row_restriction(False):
                ref_loss, ref_grads = step_grads(enc, batch)
        else:
            with K.disabled():
                ref_loss, ref_grads = step_grads(enc, batch)
        torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=1e-7)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=rtol, atol=rtol * float(r.abs().max()))


GRAPHS = {"tiny": (6, 8, 0.4, 3), "medium": (300, 400, 0.03, 64)}


@pytest.mark.parametrize("graph", GRAPHS)
def test_row_restricted_lightgcn_step_equals_the_full_step(graph):
    n_users, n_items, density, batch_size = GRAPHS[graph]
    data = graph_data(n_users, n_items, density)
    torch.manual_seed(0)
    enc = LightGCN(dim=16, n_layers=3, alpha=[0.1, 0.2, 0.3, 0.4])
    enc.bind(data)
    enc.train()
    assert_same_step(enc, make_batch(data, batch_size))


def test_row_restricted_polynomial_matches_the_dense_reference():
    data = graph_data(6, 8, 0.4)
    adj = bipartite_adjacency(data.train)
    a, at = adj.matrices()
    dense = adj.dense().double()
    alpha = (0.25, 0.0, 0.5, 0.25)
    x = torch.randn(adj.n, 5, dtype=torch.double, requires_grad=True)
    rows = torch.tensor([0, 3, 9, 12])
    g = torch.randn(len(rows), 5, dtype=torch.double)
    y = sparse_polynomial_rows(a.to(torch.double), at.to(torch.double), x, alpha, rows)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    xr = x.detach().clone().requires_grad_()
    yr = sum(c * torch.linalg.matrix_power(dense, k) @ xr for k, c in enumerate(alpha))[rows]
    (gr,) = torch.autograd.grad((yr * g).sum(), xr)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(gx, gr)
    torch.testing.assert_close(y, sparse_polynomial(a.double(), at.double(), x, alpha)[rows])


@pytest.mark.parametrize("norm,self_loops", [("sym", False), ("left", True)])
def test_row_restricted_spmm_gradient_matches_dense(norm, self_loops):
    data = graph_data(7, 9, 0.4, seed=1)
    adj = bipartite_adjacency(data.train, norm, self_loops)
    a, at = adj.matrices()
    dense = adj.dense()
    x = torch.randn(adj.n, 4, requires_grad=True)
    rows = torch.tensor([2, 11, 4])
    g = torch.randn(3, 4)
    (gx,) = torch.autograd.grad((spmm_rows(a, at, x, rows) * g).sum(), x)
    torch.testing.assert_close(gx, dense[rows].T @ g)


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("variant", [OfficialNGCF(), PaperNGCF()], ids=["official", "paper"])
@pytest.mark.parametrize("restrict_below", [0.0, 1.0], ids=["last-layer", "every-hop"])
@pytest.mark.parametrize("dropout_kind", ["edge", "node"])
def test_row_restricted_ngcf_step_equals_the_full_step(graph, variant, restrict_below, dropout_kind, monkeypatch):
    # With dropouts on: the restricted step draws the same masks as the full one, so the same step.
    n_users, n_items, density, batch_size = GRAPHS[graph]
    data = graph_data(n_users, n_items, density)
    torch.manual_seed(0)
    enc = NGCF(dim=8, n_layers=3, variant=variant, node_dropout=0.2, message_dropout=0.2,
               dropout_kind=dropout_kind)
    enc.bind(data)
    enc.train()
    monkeypatch.setattr(NGCF, "restrict_below", restrict_below)
    batch = make_batch(data, batch_size)
    if restrict_below == 1.0:  # every layer but the first computes only the rows within reach
        rows = torch.unique(torch.cat([batch.users, batch.items.reshape(-1) + data.n_users]))
        sets = enc.row_sets(enc.adj.matrices()[0], rows)
        assert sets[-1] is rows and all(s is not None for s in sets)
    assert_same_step(enc, batch, rtol=1e-4)


def test_ngcf_feed_normalized_row_restricted_step_equals_the_full_step(monkeypatch):
    data = graph_data(300, 400, 0.03)
    torch.manual_seed(0)
    enc = NGCF(dim=8, n_layers=3, feed_normalized=True)
    enc.bind(data)
    enc.train()
    monkeypatch.setattr(NGCF, "restrict_below", 1.0)
    assert_same_step(enc, make_batch(data, 64), rtol=1e-4)
