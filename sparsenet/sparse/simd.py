"""Fixed-order float32 batch reductions for the kernels, emitted as explicit LLVM vector code.

The kernels compile without fastmath's `reassoc`, so LLVM may not reorder a sum by itself (a
reordered, vectorised reduction depends on how the code happened to be compiled: a freshly
compiled kernel and a cached one were seen to differ at batch 128). numba also compiles without
the SLP vectoriser and tells LLVM nothing about aliasing, so neither independent scalar
accumulators nor lane arrays written in numba get packed into SIMD registers reliably (measured
2-5x slower than the reassociated loop). These intrinsics therefore write the vector code
themselves: LANES partial sums in one <16 x float> register, lane l summing elements l, l + 16,
l + 32, ... in order; then lanes l and l + 8 are added, then l and l + 4, l + 2, l + 1 (a fixed
tree); then the n % 16 tail elements in order. The order of every addition depends only on n,
never on the thread count, the compiler's choices or the CPU's vector width. (The backend may
fuse a multiply and its add into an FMA under the kernels' `contract` flag: the same choice for the
same compiled code on the same CPU, and the numba cache is per CPU.)

The kernels' numba cache is keyed on kernels.py, not on this file: kernels.py folds SOURCE_DIGEST
(a hash of this file) into its kernels' cache key, so an edit here recompiles them (`file_digest`
chains such digests for modules that inline helpers of kernels.py or csr.py).

`prefetch(a, i)` asks the CPU to start loading row i of a 2-D array (every cache line) or the
line holding element i of a 1-D array: the kernels issue it a few connections ahead when the
gathered activations do not fit in cache (no effect on results).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16


def file_digest(path: str, *inlined: int) -> int:
    """A non-zero 60-bit hash of the file at `path` and the digests of the modules whose helpers it inlines."""
    h = hashlib.sha256(Path(path).read_bytes())
    for digest in inlined:
        h.update(int(digest).to_bytes(8, "little"))
    return int(h.hexdigest()[:15], 16) | 1


SOURCE_DIGEST = file_digest(__file__)

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_VEC = ir.VectorType(_F32, LANES)


def _is_f32_vector(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == types.float32


def _fold_lanes(builder, v):
    """IR for the sum of the LANES lanes of v in the fixed tree: l + (l + 8), then + 4, + 2, + 1."""
    width = LANES
    while width > 1:
        h = width // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h, width))))
        v = builder.fadd(lo, hi)
        width = h
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _reduce(context, builder, arrays, n):
    """IR for sum over b < n of prod(a[b] for a in arrays) (one or two arrays), fixed order."""
    ptrs = [a.data for a in arrays]
    acc = cgutils.alloca_once_value(builder, ir.Constant(_VEC, [0.0] * LANES))
    n_vec = builder.udiv(n, ir.Constant(_I64, LANES))
    with cgutils.for_range(builder, n_vec) as loop:
        off = builder.mul(loop.index, ir.Constant(_I64, LANES))
        term = None
        for p in ptrs:
            v = builder.load(builder.bitcast(builder.gep(p, [off]), _VEC.as_pointer()), align=4)
            term = v if term is None else builder.fmul(term, v)
        builder.store(builder.fadd(builder.load(acc), term), acc)
    total = cgutils.alloca_once_value(builder, _fold_lanes(builder, builder.load(acc)))
    start = builder.mul(n_vec, ir.Constant(_I64, LANES))
    with cgutils.for_range_slice(builder, start, n, ir.Constant(_I64, 1)) as (idx, _):
        term = None
        for p in ptrs:
            x = builder.load(builder.gep(p, [idx]))
            term = x if term is None else builder.fmul(term, x)
        builder.store(builder.fadd(builder.load(total), term), total)
    return builder.load(total)


@intrinsic
def dot(typingctx, a, c, n):
    """sum(a[b] * c[b] for b < n) for contiguous 1-D float32 a, c (len >= n), in the fixed order above."""
    if not (_is_f32_vector(a) and _is_f32_vector(c) and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:2], args[:2])]
        return _reduce(context, builder, arrays, context.cast(builder, args[2], sig.args[2], types.int64))

    return types.float32(a, c, n), codegen


def _splat(builder, value):
    v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _dots_shared(context, builder, rows, x, n, dx=None, weights=None):
    """IR for [dot(r, x, n) for r in rows], each in dot's order, sharing each load of x.

    With dx and four weights, also dx[b] += (w0 r0[b] + w1 r1[b]) + (w2 r2[b] + w3 r3[b]) in the
    same sweep (elementwise, so its order is fixed by the expression).
    """
    def axpy(load_row, load_dx, store_dx, splat):
        w = [splat(v) for v in weights]
        r = [load_row(i) for i in range(4)]
        upd = builder.fadd(builder.fadd(builder.fmul(w[0], r[0]), builder.fmul(w[1], r[1])),
                           builder.fadd(builder.fmul(w[2], r[2]), builder.fmul(w[3], r[3])))
        store_dx(builder.fadd(load_dx(), upd))
        return r

    accs = [cgutils.alloca_once_value(builder, ir.Constant(_VEC, [0.0] * LANES)) for _ in rows]
    n_vec = builder.udiv(n, ir.Constant(_I64, LANES))
    with cgutils.for_range(builder, n_vec) as loop:
        off = builder.mul(loop.index, ir.Constant(_I64, LANES))
        xv = builder.load(builder.bitcast(builder.gep(x.data, [off]), _VEC.as_pointer()), align=4)

        def vec_ptr(arr):
            return builder.bitcast(builder.gep(arr.data, [off]), _VEC.as_pointer())

        if dx is None:
            vals = [builder.load(vec_ptr(r), align=4) for r in rows]
        else:
            vals = axpy(lambda i: builder.load(vec_ptr(rows[i]), align=4),
                        lambda: builder.load(vec_ptr(dx), align=4),
                        lambda v: builder.store(v, vec_ptr(dx), align=4), lambda w: _splat(builder, w))
        for v, acc in zip(vals, accs):
            builder.store(builder.fadd(builder.load(acc), builder.fmul(v, xv)), acc)
    totals = []
    for acc in accs:
        totals.append(cgutils.alloca_once_value(builder, _fold_lanes(builder, builder.load(acc))))
    start = builder.mul(n_vec, ir.Constant(_I64, LANES))
    with cgutils.for_range_slice(builder, start, n, ir.Constant(_I64, 1)) as (idx, _):
        xe = builder.load(builder.gep(x.data, [idx]))
        if dx is None:
            vals = [builder.load(builder.gep(r.data, [idx])) for r in rows]
        else:
            vals = axpy(lambda i: builder.load(builder.gep(rows[i].data, [idx])),
                        lambda: builder.load(builder.gep(dx.data, [idx])),
                        lambda v: builder.store(v, builder.gep(dx.data, [idx])), lambda w: w)
        for v, t in zip(vals, totals):
            builder.store(builder.fadd(builder.load(t), builder.fmul(v, xe)), t)
    return [builder.load(t) for t in totals]


@intrinsic
def dot4(typingctx, a0, a1, a2, a3, c, n):
    """(dot(a0, c, n), ..., dot(a3, c, n)), bit-identical to four `dot` calls, loading c once."""
    if not (all(_is_f32_vector(t) for t in (a0, a1, a2, a3, c)) and isinstance(n, types.Integer)):
        return None
    ret = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:5], args[:5])]
        n64 = context.cast(builder, args[5], sig.args[5], types.int64)
        sums = _dots_shared(context, builder, arrays[:4], arrays[4], n64)
        return context.make_tuple(builder, ret, sums)

    return ret(a0, a1, a2, a3, c, n), codegen


@intrinsic
def dot4_update(typingctx, a0, a1, a2, a3, c, dx, w0, w1, w2, w3, n):
    """dot4(a0..a3, c, n), and in the same sweep dx[b] += (w0 a0[b] + w1 a1[b]) + (w2 a2[b] + w3 a3[b])."""
    if not (all(_is_f32_vector(t) for t in (a0, a1, a2, a3, c, dx)) and isinstance(n, types.Integer)
            and all(t == types.float32 for t in (w0, w1, w2, w3))):
        return None
    ret = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:6], args[:6])]
        n64 = context.cast(builder, args[10], sig.args[10], types.int64)
        sums = _dots_shared(context, builder, arrays[:4], arrays[4], n64, dx=arrays[5], weights=list(args[6:10]))
        return context.make_tuple(builder, ret, sums)

    return ret(a0, a1, a2, a3, c, dx, w0, w1, w2, w3, n), codegen


@intrinsic
def total(typingctx, a, n):
    """sum(a[b] for b < n) for a contiguous 1-D float32 a, in the same fixed order as `dot`."""
    if not (_is_f32_vector(a) and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        arrays = [context.make_array(sig.args[0])(context, builder, args[0])]
        return _reduce(context, builder, arrays, context.cast(builder, args[1], sig.args[1], types.int64))

    return types.float32(a, n), codegen


@intrinsic
def prefetch(typingctx, a, i):
    """Prefetch row i of a C-contiguous 2-D array (all its cache lines) or element i of a 1-D array."""
    if not (isinstance(a, types.Array) and a.ndim in (1, 2) and a.layout == "C" and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        arr = context.make_array(aty)(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.int64)
        itemsize = context.get_abi_sizeof(context.get_data_type(aty.dtype))
        if aty.ndim == 2:
            row_bytes = builder.mul(builder.extract_value(arr.shape, 1), ir.Constant(_I64, itemsize))
        else:
            row_bytes = ir.Constant(_I64, itemsize)
        start = builder.add(builder.ptrtoint(arr.data, _I64), builder.mul(idx, row_bytes))
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        n_lines = builder.udiv(builder.add(row_bytes, ir.Constant(_I64, 63)), ir.Constant(_I64, 64))
        with cgutils.for_range(builder, n_lines) as loop:
            addr = builder.add(start, builder.mul(loop.index, ir.Constant(_I64, 64)))
            # read, keep in all cache levels, data cache
            builder.call(fn, [builder.inttoptr(addr, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                              ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(a, i), codegen
