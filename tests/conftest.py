"""Under NUMBA_DISABLE_JIT=1 (coverage of the kernels as Python), simd.py's LLVM intrinsics have no
Python form: they are replaced by tests/pure_simd.py's float32 equivalents in the same summation order."""

import numba

if numba.config.DISABLE_JIT:
    from sparsenet.sparse import simd
    from tests import pure_simd

    for _name in ("dot", "dot4", "dot4_update", "total", "prefetch"):
        setattr(simd, _name, getattr(pure_simd, _name))
