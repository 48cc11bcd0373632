"""A tiny forward/backward through every kernel; prints a SHA-256 of all the output bytes.

Run by tests/unit/test_determinism.py in fresh processes (to compare a fresh compile with a cached one).
Usage: python -m tests.unit.determinism_run THREADS
"""

import hashlib
import sys

import numba
import numpy as np


def run(threads: int) -> str:
    from sparsenet.sparse import kernels
    from sparsenet.sparse.init import erdos_renyi_layer

    numba.set_num_threads(threads)
    h = hashlib.sha256()
    rng = np.random.default_rng(5)
    layer = erdos_renyi_layer(300, 200, 20.0, "he_uniform", rng)
    layer.bias[:] = rng.standard_normal(200).astype(np.float32)
    for batch in (128, 37):
        x = rng.standard_normal((300, batch), dtype=np.float32)
        out = np.empty((200, batch), np.float32)
        factor = np.empty_like(out)
        kernels.forward(layer, x, out, slope=0.2, dropout=0.25, drop_key=7, grad_factor=factor)
        delta = rng.standard_normal((200, batch), dtype=np.float32)
        grad = np.empty(layer.nnz, np.float32)
        dx = np.empty_like(x)
        gf = rng.random((300, batch), dtype=np.float32)
        sums = np.empty(300, np.float32)
        kernels.backward(layer, x, delta, grad, dx, gf, sums)
        grad1 = np.empty(layer.nnz, np.float32)
        kernels.backward(layer, x, delta, grad1)
        rsum = np.empty(200, np.float32)
        kernels.row_sums(delta, rsum)
        for a in (out, factor, grad, dx, sums, grad1, rsum):
            h.update(a.tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print(run(int(sys.argv[1])))
