"""The graph encoders' CPU kernels in numba: CSR × dense products (all rows, a subset, the transposed scatter) and
the fused element-wise passes of NGCF's layers and of dropout masks.

The graph encoders spend most of a training step in products of the normalised adjacency with a ``[N, D]`` table.
On one CPU core each non-zero costs one read of a ``D``-wide row of the table (256 bytes at ``D = 64``), at random:
the kernels here do little else. Each output row is accumulated in a fixed-size stack buffer that LLVM keeps in
vector registers (for the widths in :data:`SPECIALISED`; a heap buffer for others), the table rows of the
non-zeros :data:`PREFETCH_DISTANCE` ahead are software-prefetched, and optional fused terms
(``s · (A x + c · y)``, a step of Horner's rule) save a pass over the output. Per row the summation runs in the CSR
order, as torch's (MKL's) product does, so results agree with ``torch.sparse.mm`` to float rounding.

Measured on Gowalla (70,839 nodes, 1.62M non-zeros, a [70839, 64] float32 table, one core of a shared machine):
~7-8 ms per product, where torch's takes ~7 ms on an idle machine and 18-55 ms while other jobs share the L3
(it does not prefetch; neither does scipy, ~20 ms); without the register buffer the kernel took ~10 ms, without
the prefetch 15-45 ms.

Three kernels:

- :func:`csr_mm`: ``s · (A X + c · Y)`` over all rows;
- :func:`csr_mm_rows`: the same for the rows ``rows`` only, a compact ``[R, D]`` result (``A[rows] X``);
- :func:`csr_scatter_rows`: ``A[rows]ᵀ G``, the product by the transpose of a row subset, as a scatter through the
  rows' own non-zeros: the backward of :func:`csr_mm_rows` without a stored transpose, and the first backward
  product of a propagation whose gradient is non-zero on a few rows only.

Element-wise kernels (:func:`bits_to_mask`, :func:`ngcf_branches`, :func:`ngcf_branches_backward`,
:func:`ngcf_input_grads`) do in one pass over ``[N, D]`` memory what torch does in two to four: at NGCF's sizes
each such pass moves 18 MB, and a layer is memory-bound outside its GEMMs.

numba is imported, and the kernels compiled, on first use only (``import recsys`` never compiles; with
``cache=True`` the compiled code is reused across processes from ``__pycache__``). Callers check :func:`usable`
first and keep torch's product otherwise: when numba is not installed, on non-CPU tensors, for dtypes other than
float32/float64, under autocast, or when the kernels are turned off, by the environment variable
``RECSYS_NO_NUMBA=1`` (read at import) or :func:`set_enabled` / :func:`disabled` (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["PREFETCH_DISTANCE", "SPECIALISED", "available", "bits_to_mask", "csr_mm", "csr_mm_rows",
           "csr_neighbourhood", "csr_scatter_rows", "disabled", "enabled", "ngcf_branches", "ngcf_branches_backward",
           "ngcf_input_grads", "set_enabled", "usable", "usable_dense"]

#: widths compiled with a fixed-width accumulator (others use one generic kernel with a runtime width).
SPECIALISED = (16, 32, 64, 128, 256)

_enabled = os.environ.get("RECSYS_NO_NUMBA", "").strip().lower() in ("", "0", "false", "no")
_available: bool | None = None
_kernels: dict[int, tuple] = {}


def available() -> bool:
    """Whether numba can be imported (checked once)."""
    global _available
    if _available is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            _available = False
        else:
            _available = True
    return _available


def enabled() -> bool:
    """Whether the numba kernels are in use: numba is available and neither ``RECSYS_NO_NUMBA`` nor
    :func:`set_enabled` turned them off."""
    return _enabled and available()


def set_enabled(flag: bool) -> bool:
    """Turn the numba kernels on or off for this process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """A block in which every product takes torch's path (the fallback), as with ``RECSYS_NO_NUMBA=1``."""
    previous = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


def _autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def usable(x: Tensor, values: Tensor) -> bool:
    """Whether a product of a CSR matrix with ``values`` by the dense ``x`` can take the numba kernels.

    Shapes:
        x: [M, D]; values: [nnz]
    """
    return (enabled() and x.device.type == "cpu" and values.device.type == "cpu" and x.dim() == 2
            and x.dtype in (torch.float32, torch.float64) and values.dtype == x.dtype and not _autocast())


def usable_dense(*tensors: Tensor | None) -> bool:
    """Whether the element-wise kernels can take these tensors (None entries are skipped): numba enabled, CPU,
    one float32/float64 dtype for all, no autocast."""
    ts = [t for t in tensors if t is not None]
    return (bool(ts) and enabled() and all(t.device.type == "cpu" for t in ts)
            and ts[0].dtype in (torch.float32, torch.float64) and all(t.dtype == ts[0].dtype for t in ts)
            and not _autocast())


#: how many non-zeros ahead the kernels prefetch the table row they will read (a software prefetch of its cache
#: lines): the table is far larger than L2, and on a shared machine often partly out of L3; 32 measured best on
#: Gowalla among 4-64 (1.5-2.5x faster than no prefetch while other jobs load the machine).
PREFETCH_DISTANCE = 32

# The kernels call these globals; _build sets them on first use (numba is not imported before).
_prefetch_line = None  # _prefetch_line(a, i, k): prefetch the cache line holding a[i, k]
_row_buffer = None  # _row_buffer(W, like): a [W] array of like's dtype on the stack (W a compile-time constant)
_advance = _cursor = None  # the row-subset kernels' prefetch cursor (_make_cursor)


def _make_cursor() -> tuple:
    """The prefetch cursor of the row-subset kernels: ``(qr, qp, qe)``, the non-zero ``qp`` of ``rows[qr]``
    (``qe`` its row's end), run ahead along the non-zeros of ``rows`` in their order, across row boundaries.

    Batch rows are short and scattered, so prefetching within a row only would leave most of each row's reads
    unhidden. Module globals (not closures of the kernels), so that the kernels' on-disk cache keys stay stable.
    """
    import numba

    @numba.njit(inline="always", boundscheck=False)
    def advance(crow, rows, qr, qp, qe):  # the cursor's next non-zero (qp == qe: past the last row)
        qp += 1
        while qp >= qe and qr + 1 < rows.shape[0]:
            qr += 1
            qp, qe = crow[rows[qr]], crow[rows[qr] + 1]
        return qr, qp, qe

    @numba.njit(inline="always", boundscheck=False)
    def cursor(crow, rows, dist):  # ``dist`` non-zeros ahead of the first
        if rows.shape[0] == 0:
            return 0, 0, 0
        qr, qp, qe = advance(crow, rows, 0, crow[rows[0]] - 1, crow[rows[0] + 1])
        for _ in range(dist):
            if qp < qe:
                qr, qp, qe = advance(crow, rows, qr, qp, qe)
        return qr, qp, qe

    return advance, cursor


def _make_intrinsics() -> tuple:
    """The two numba intrinsics the kernels use: ``llvm.prefetch``, and a fixed-size stack buffer.

    The buffer is the row accumulator: an ``alloca`` of constant size, which LLVM keeps in vector registers for the
    whole row (an ``np.empty`` buffer is heap memory LLVM must assume may alias the table, so every non-zero
    would load and store it: ~1.5x slower).
    """
    import llvmlite.binding as llvm
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
    from numba.np.arrayobj import make_array, populate_array

    # LLVM 15 made pointers opaque; the intrinsic's name carries the pointer type.
    name = "llvm.prefetch.p0" if llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"

    @intrinsic
    def prefetch_line(typingctx, arr, i, k):
        def codegen(context, builder, signature, args):
            aryty, ity, kty = signature.args
            ary = context.make_array(aryty)(context, builder, args[0])
            idx = [context.cast(builder, args[1], ity, types.intp), context.cast(builder, args[2], kty, types.intp)]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                name)
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep in all caches, data
            return context.get_dummy_value()

        return types.void(arr, i, k), codegen

    @intrinsic
    def row_buffer(typingctx, n, like):
        if not isinstance(n, types.IntegerLiteral):
            return None
        size, arrty = max(1, n.literal_value), types.Array(like.dtype, 1, "C")

        def codegen(context, builder, signature, args):
            lty = context.get_data_type(like.dtype)
            ptr = cgutils.alloca_once(builder, lty, size=size)
            ary = make_array(arrty)(context, builder)
            intp = context.get_value_type(types.intp)
            item = context.get_abi_sizeof(lty)
            populate_array(ary, data=ptr, shape=[intp(size)], strides=[intp(item)], itemsize=intp(item),
                           meminfo=None)
            return ary._getvalue()

        return arrty(n, like), codegen

    return prefetch_line, row_buffer


def _build(width: int, intrinsics: bool = True) -> tuple:
    """The three CSR kernels for a fixed row width (0: any width, read at run time, with a heap buffer).

    ``intrinsics=False`` (the fallback should an intrinsic not lower with this numba/LLVM) makes the prefetch a
    no-op and the buffer a heap array, and does not cache: an on-disk kernel is keyed by its code, not by the
    globals it calls.
    """
    global _prefetch_line, _row_buffer, _advance, _cursor
    import numba

    if _advance is None:
        _advance, _cursor = _make_cursor()

    if not intrinsics:
        _prefetch_line = numba.njit(lambda a, i, k: None)
        _row_buffer = numba.njit(lambda n, like: np.empty(n, like.dtype))
    elif _prefetch_line is None:
        _prefetch_line, _row_buffer = _make_intrinsics()
    W, DIST = width, (PREFETCH_DISTANCE if intrinsics else 0)  # closure constants, compiled in
    cache = intrinsics

    @numba.njit(cache=cache, fastmath=True, nogil=True, boundscheck=False)
    def mm(crow, col, val, x, y, c, s, out):  # out[i] = s * (Σ_p val[p] x[col[p]] + c * y[i])
        d = W if W else x.shape[1]
        acc = _row_buffer(W, out) if W else np.empty(d, out.dtype)
        line = max(1, 64 // x.itemsize)
        nnz = col.shape[0]
        for i in range(out.shape[0]):
            for k in range(d):
                acc[k] = 0
            for p in range(crow[i], crow[i + 1]):
                if DIST and p + DIST < nnz:
                    for k in range(0, d, line):
                        _prefetch_line(x, col[p + DIST], k)
                j = col[p]
                v = val[p]
                for k in range(d):
                    acc[k] += v * x[j, k]
            if c != 0:
                for k in range(d):
                    out[i, k] = s * (acc[k] + c * y[i, k])
            else:
                for k in range(d):
                    out[i, k] = s * acc[k]

    @numba.njit(cache=cache, fastmath=True, nogil=True, boundscheck=False)
    def mm_rows(crow, col, val, x, rows, y, c, s, out):  # out[r] = s * (A[rows[r]] x + c * y[rows[r]])
        d = W if W else x.shape[1]
        acc = _row_buffer(W, out) if W else np.empty(d, out.dtype)
        line = max(1, 64 // x.itemsize)
        qr, qp, qe = _cursor(crow, rows, DIST)
        for r in range(rows.shape[0]):
            i = rows[r]
            for k in range(d):
                acc[k] = 0
            for p in range(crow[i], crow[i + 1]):
                if DIST and qp < qe:
                    for k in range(0, d, line):
                        _prefetch_line(x, col[qp], k)
                    qr, qp, qe = _advance(crow, rows, qr, qp, qe)
                j = col[p]
                v = val[p]
                for k in range(d):
                    acc[k] += v * x[j, k]
            if c != 0:
                for k in range(d):
                    out[r, k] = s * (acc[k] + c * y[i, k])
            else:
                for k in range(d):
                    out[r, k] = s * acc[k]

    @numba.njit(cache=cache, fastmath=True, nogil=True, boundscheck=False)
    def scatter_rows(crow, col, val, g, rows, out):  # out[col[p]] += val[p] * g[r] over the rows' non-zeros
        d = W if W else g.shape[1]
        gr = _row_buffer(W, out) if W else np.empty(d, out.dtype)
        line = max(1, 64 // out.itemsize)
        qr, qp, qe = _cursor(crow, rows, DIST)
        for r in range(rows.shape[0]):
            i = rows[r]
            for k in range(d):
                gr[k] = g[r, k]
            for p in range(crow[i], crow[i + 1]):
                if DIST and qp < qe:
                    for k in range(0, d, line):
                        _prefetch_line(out, col[qp], k)
                    qr, qp, qe = _advance(crow, rows, qr, qp, qe)
                j = col[p]
                v = val[p]
                for k in range(d):
                    out[j, k] += v * gr[k]

    return mm, mm_rows, scatter_rows


_intrinsics_ok = True


def _run(width: int, which: int, *args) -> None:
    """Run kernel ``which`` (0 mm, 1 mm_rows, 2 scatter_rows) for rows of ``width``, compiling it on first use."""
    global _intrinsics_ok, _prefetch_line, _row_buffer
    key = width if width in SPECIALISED else 0
    if key not in _kernels:
        _kernels[key] = _build(key, _intrinsics_ok)
    try:
        _kernels[key][which](*args)
    except Exception as e:  # an intrinsic did not compile with this numba/LLVM: build without them
        from numba.core.errors import NumbaError

        if not (_intrinsics_ok and isinstance(e, NumbaError)):
            raise
        _intrinsics_ok = False
        _kernels.clear()
        _kernels[key] = _build(key, False)
        try:
            _kernels[key][which](*args)
        except Exception:  # not the intrinsics' fault (e.g. unsupported argument types): keep them for others
            _intrinsics_ok, _prefetch_line, _row_buffer = True, None, None
            _kernels.clear()
            raise e from None


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _parts(crow: Tensor, col: Tensor, values: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if col.dtype != crow.dtype:
        col = col.to(crow.dtype)
    return _np(crow.contiguous()), _np(col.contiguous()), _np(values.contiguous())


def csr_mm(crow: Tensor, col: Tensor, values: Tensor, x: Tensor, y: Tensor | None = None, c: float = 0.0,
           s: float = 1.0) -> Tensor:
    """``s · (A X + c · Y)`` for the CSR matrix ``A = (crow, col, values)`` (check :func:`usable` first).

    Shapes:
        crow: [N + 1]; col, values: [nnz]; x: [M, D]; y: [N, D] or None -> [N, D]
    """
    x = x.detach().contiguous()
    out = torch.empty(len(crow) - 1, x.shape[1], dtype=x.dtype)
    if c != 0 and y is None:
        raise ValueError("csr_mm: c != 0 needs y")
    yy = _np(y.contiguous()) if c != 0 else _np(out)
    _run(x.shape[1], 0, *_parts(crow, col, values), _np(x), yy, float(c), float(s), _np(out))
    return out


def csr_mm_rows(crow: Tensor, col: Tensor, values: Tensor, x: Tensor, rows: Tensor, y: Tensor | None = None,
                c: float = 0.0, s: float = 1.0) -> Tensor:
    """``s · (A[rows] X + c · Y[rows])``, the product for the rows ``rows`` of ``A`` only.

    Shapes:
        crow: [N + 1]; col, values: [nnz]; x: [M, D]; rows: [R] (any order, in [0, N)); y: [N, D] or None
        -> [R, D]
    """
    x = x.detach().contiguous()
    out = torch.empty(len(rows), x.shape[1], dtype=x.dtype)
    if c != 0 and y is None:
        raise ValueError("csr_mm_rows: c != 0 needs y")
    yy = _np(y.contiguous()) if c != 0 else _np(x)
    idx = _np(rows.to(torch.int64).contiguous())
    _run(x.shape[1], 1, *_parts(crow, col, values), _np(x), idx, yy, float(c), float(s), _np(out))
    return out


def csr_scatter_rows(crow: Tensor, col: Tensor, values: Tensor, g: Tensor, rows: Tensor, n_cols: int,
                     out: Tensor | None = None) -> Tensor:
    """``A[rows]ᵀ G`` (added into ``out`` when given, else into zeros): row ``r`` of ``G`` is spread over the
    non-zeros of row ``rows[r]`` of ``A``.

    Shapes:
        crow: [N + 1]; col, values: [nnz]; g: [R, D]; rows: [R] (no duplicates needed) -> [n_cols, D]
    """
    g = g.detach().contiguous()
    if out is None:
        out = torch.zeros(n_cols, g.shape[1], dtype=g.dtype)
    idx = _np(rows.to(torch.int64).contiguous())
    _run(g.shape[1], 2, *_parts(crow, col, values), _np(g), idx, _np(out))
    return out


_dense: dict[str, object] = {}


def _dense_kernels() -> dict[str, object]:
    """The element-wise kernels, compiled on first use (on flat views: one loop each)."""
    if _dense:
        return _dense
    import numba

    jit = numba.njit(cache=True, fastmath=True, nogil=True, boundscheck=False)

    @jit
    def bits_mask(bits, threshold, scale, out):  # out[i] = scale if bits[i] >= threshold else 0
        for i in range(out.shape[0]):
            out[i] = scale if bits[i] >= threshold else 0

    @jit
    def branches(p1, p2, mask, has_mask, slope, out):  # mask * (lrelu(p1) + lrelu(p2)), rows of width d
        n, d = out.shape
        for i in range(n):
            for k in range(d):
                a = p1[i, k]
                b = p2[i, k]
                v = (a if a > 0 else a * slope) + (b if b > 0 else b * slope)
                out[i, k] = v * mask[i, k] if has_mask else v

    @jit
    def branches_backward(grad, mask, has_mask, p1, p2, slope, g1, g2, sums):
        # g_j = grad * mask * lrelu'(p_j); sums = column sums of g1 (row 0) and g2 (row 1), in float64
        n, d = grad.shape
        for i in range(n):
            for k in range(d):
                g = grad[i, k] * mask[i, k] if has_mask else grad[i, k]
                a = g if p1[i, k] > 0 else g * slope
                b = g if p2[i, k] > 0 else g * slope
                g1[i, k] = a
                g2[i, k] = b
                sums[0, k] += a
                sums[1, k] += b

    @jit
    def input_grads(t1, t2, x, side, gx, gside):  # gside = t1 + t2 * x; gx = t2 * side
        n, d = t1.shape
        for i in range(n):
            for k in range(d):
                b = t2[i, k]
                gside[i, k] = t1[i, k] + b * x[i, k]
                gx[i, k] = b * side[i, k]

    _dense.update(bits_mask=bits_mask, branches=branches, branches_backward=branches_backward,
                  input_grads=input_grads)
    return _dense


def bits_to_mask(bits: Tensor, threshold: int, scale: float, dtype: torch.dtype) -> Tensor:
    """``scale`` where ``bits >= threshold``, else 0, in ``dtype``: ``(bits >= t).to(dtype).mul_(scale)`` in one
    pass.

    Shapes:
        bits: [n] int16 -> [n]
    """
    out = torch.empty(bits.shape[0], dtype=dtype)
    s = np.float32(scale) if dtype == torch.float32 else np.float64(scale)
    _dense_kernels()["bits_mask"](_np(bits.contiguous()), np.int16(threshold), s, _np(out))
    return out


def _scalar(x: Tensor, v: float):
    return np.float32(v) if x.dtype == torch.float32 else np.float64(v)


def ngcf_branches(p1: Tensor, p2: Tensor, mask: Tensor | None, slope: float) -> Tensor:
    """``mask ⊙ (LeakyReLU(p1) + LeakyReLU(p2))``, the official NGCF layer's output from its two pre-activations.

    Shapes:
        p1, p2: [N, D]; mask: [N, D] or None -> [N, D]
    """
    p1, p2 = p1.contiguous(), p2.contiguous()
    out = torch.empty_like(p1)
    m = p1 if mask is None else mask.contiguous()
    _dense_kernels()["branches"](_np(p1), _np(p2), _np(m), mask is not None, _scalar(p1, slope), _np(out))
    return out


def ngcf_branches_backward(grad: Tensor, mask: Tensor | None, p1: Tensor, p2: Tensor, slope: float
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients at both pre-activations of :func:`ngcf_branches`, and their column sums (the biases').

    Shapes:
        grad, p1, p2: [N, D]; mask: [N, D] or None -> (g1 [N, D], g2 [N, D], sum g1 [1, D], sum g2 [1, D])
    """
    grad = grad.contiguous()
    g1, g2 = torch.empty_like(grad), torch.empty_like(grad)
    sums = np.zeros((2, grad.shape[1]), np.float64)
    m = grad if mask is None else mask.contiguous()
    _dense_kernels()["branches_backward"](_np(grad), _np(m), mask is not None, _np(p1.contiguous()),
                                          _np(p2.contiguous()), _scalar(grad, slope), _np(g1), _np(g2), sums)
    sums = torch.from_numpy(sums).to(grad.dtype)
    return g1, g2, sums[:1], sums[1:]


def ngcf_input_grads(t1: Tensor, t2: Tensor, x: Tensor, side: Tensor) -> tuple[Tensor, Tensor]:
    """``(t2 ⊙ side, t1 + t2 ⊙ x)``: the official NGCF layer's gradients at its input and at ``side = L' x``.

    Shapes:
        t1, t2, x, side: [N, D] -> (grad x [N, D], grad side [N, D])
    """
    t1, t2 = t1.contiguous(), t2.contiguous()
    gx, gside = torch.empty_like(t1), torch.empty_like(t1)
    _dense_kernels()["input_grads"](_np(t1), _np(t2), _np(x.detach().contiguous()), _np(side.detach().contiguous()),
                                    _np(gx), _np(gside))
    return gx, gside


_hops: list = []


def csr_neighbourhood(crow: Tensor, col: Tensor, rows: Tensor) -> Tensor:
    """The sorted union of ``rows`` and the columns of their non-zeros: the nodes ``A[rows] X`` reads, with
    ``rows`` themselves.

    Shapes:
        crow: [N + 1]; col: [nnz]; rows: [R] -> [R'] int64
    """
    if not _hops:
        import numba

        @numba.njit(cache=True, nogil=True, boundscheck=False)
        def neighbourhood(crow, col, rows, mark):
            for r in range(rows.shape[0]):
                i = rows[r]
                mark[i] = True
                for p in range(crow[i], crow[i + 1]):
                    mark[col[p]] = True

        _hops.append(neighbourhood)
    mark = np.zeros(len(crow) - 1, np.bool_)
    c, k, _ = _parts(crow, col, col)
    _hops[0](c, k, _np(rows.to(torch.int64).contiguous()), mark)
    return torch.from_numpy(np.flatnonzero(mark))
