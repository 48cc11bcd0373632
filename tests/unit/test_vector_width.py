"""sparsenet lets LLVM use 512-bit vectors on AVX-512 CPUs (jitcache.use_full_vector_width), leaves a
user's own NUMBA_CPU_* choice alone, and the kernels give the same bits at either vector width."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FEATURES = """
import sparsenet, numba
from numba.core import registry
print(registry.cpu_target.target_context.codegen()._tm_features)
"""

KERNEL_BITS = """
import hashlib
import numpy as np
import sparsenet
from sparsenet.sparse import kernels
from sparsenet.sparse.init import erdos_renyi_layer

rng = np.random.default_rng(3)
layer = erdos_renyi_layer(300, 200, 10.0, "he_uniform", rng)
x = rng.standard_normal((300, 37), dtype=np.float32)
out, factor = np.empty((200, 37), np.float32), np.empty((200, 37), np.float32)
kernels.forward(layer, x, out, slope=0.6, dropout=0.3, drop_key=11, grad_factor=factor)
delta = rng.standard_normal((200, 37), dtype=np.float32)
grad, dx, sums = np.empty(layer.nnz, np.float32), np.empty((300, 37), np.float32), np.empty(300, np.float32)
kernels.backward(layer, x, delta, grad, dx, np.ones((300, 37), np.float32), sums)
grad0 = np.empty(layer.nnz, np.float32)
kernels.backward(layer, x, delta, grad0)
print(hashlib.sha256(b"".join(a.tobytes() for a in (out, factor, grad, dx, sums, grad0))).hexdigest())
"""


def _run(code: str, **env: str) -> list[str]:
    """The words `code` printed, run in a new interpreter with `env` added."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _host_features() -> str:
    from numba.core import codegen

    return codegen.get_host_cpu_features()


def test_llvm_gets_512_bit_vectors_exactly_on_avx512_hosts():
    host = _host_features()
    features = _run(FEATURES)[-1].split(",")
    assert ("-prefer-256-bit" in features) == ("+avx512f" in host.split(","))
    assert set(host.split(",")) <= set(features)  # every host feature kept


def test_a_users_own_cpu_features_are_left_alone():
    mine = _host_features() + ",+prefer-256-bit"
    assert _run(FEATURES, NUMBA_CPU_FEATURES=mine)[-1] == mine


@pytest.mark.skipif("+avx512f" not in _host_features().split(","), reason="one vector width only without AVX-512")
def test_kernels_give_the_same_bits_at_256_and_512_bit_vectors(tmp_path):
    """Fresh compiles in a private cache; the 256-bit run is what numba does when the user names the host's
    own features (sparsenet then adds nothing)."""
    wide = _run(KERNEL_BITS, NUMBA_CACHE_DIR=str(tmp_path / "wide"))[-1]
    narrow = _run(KERNEL_BITS, NUMBA_CACHE_DIR=str(tmp_path / "narrow"), NUMBA_CPU_FEATURES=_host_features())[-1]
    assert wide == narrow


CACHED = """
import numpy as np
from sparsenet import jitcache
from sparsenet.sparse import kernels

jitcache.TRAINING_KERNELS = ("_gather_kernel",)  # one small kernel stands for the four
before = jitcache.kernels_cached()
kernels.gather_batch(np.ones((3, 4), np.float32), np.arange(2), np.empty((4, 2), np.float32))
print(before, jitcache.kernels_cached())
"""


def test_the_compile_notice_sees_a_cache_built_for_other_cpu_features(tmp_path):
    """An index that exists but holds the kernels for another target (here: other NUMBA_CPU_FEATURES, as
    after the switch to 512-bit vectors) does not count as compiled."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    assert _run(CACHED, **env, NUMBA_CPU_FEATURES=_host_features() + ",+prefer-256-bit")[-1] == "True"
    assert _run(CACHED, **env) == ["False", "True"]  # compiled for this target now
    assert _run(CACHED, **env) == ["True", "True"]
