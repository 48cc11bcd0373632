"""Where numba caches the compiled kernels, whether they still need compiling, and the vector width
LLVM compiles them for.

numba would otherwise write its cache into the package's own __pycache__ whenever that is writable,
and load from it whatever it finds there: on a shared install another user's files, which numba
unpickles. The kernels are cached instead in a folder of the user's own (mode 0700), unless
NUMBA_CACHE_DIR says otherwise. Imported by sparsenet/__init__.py before any kernel is defined.

On AVX-512 CPUs LLVM prefers 256-bit vectors unless told otherwise; the kernels, bound by how fast
activations come from L2, run faster with 512-bit ones (use_full_vector_width, measured in its docstring).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numba

TRAINING_KERNELS = ("_forward_kernel", "_backward_kernel", "_weight_grad_kernel", "_gather_kernel")
COLD_COMPILE_SECONDS = "15-45"  # measured (quiet and loaded 2-core machine): docs/benchmarks.md "Kernel compilation"


def private_cache_dir() -> Path:
    """$XDG_CACHE_HOME/sparsenet/numba (default ~/.cache/sparsenet/numba)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsenet" / "numba"


def _usable(path: Path) -> bool:
    """path is (now) a folder owned by this user that nobody else may write to."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def use_private_cache() -> str | None:
    """Point numba's cache at the private folder unless the user chose one; returns the folder in use
    (None: the private folder is unusable and numba picks its own)."""
    if numba.config.CACHE_DIR:
        return numba.config.CACHE_DIR
    path = private_cache_dir()
    if not _usable(path):
        return None
    numba.config.CACHE_DIR = str(path)
    return str(path)


def use_full_vector_width() -> bool:
    """Let LLVM use the CPU's 512-bit vectors on AVX-512 (its default there is 256): on the 2-core Xeon
    (Sapphire Rapids), 1000x1000 eps 20 batch 128, 2 threads, buffers on cache lines, forward with dropout
    59.6 -> 72.8 GFLOP/s (scripts/bench_kernels.py), and a FashionMNIST epoch 0.943 -> 0.862-0.889 s
    (scripts/bench_contention.py; docs/benchmarks.md). Same bits:
    the kernels' sums have a fixed order whatever the width. Returns whether it applied: not when the
    user set NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, nor after numba compiled anything in this process."""
    from numba.core import codegen, registry

    if numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None:
        return False
    if "_toplevel_target_context" in vars(registry.cpu_target):
        return False  # the code generator exists already (a cached property), its features fixed
    features = codegen.get_host_cpu_features()
    if "+avx512f" not in features.split(","):
        return False
    numba.config.CPU_FEATURES = features + ",-prefer-256-bit"
    return True


def kernels_cached() -> bool:
    """Whether numba's cache holds the training kernels compiled from this source for this CPU and
    vector width (False: the first epoch compiles; also after an upgrade or a NUMBA_CPU_* change)."""
    from numba.core import registry

    from .sparse import kernels

    try:
        dispatchers = [getattr(kernels, name) for name in TRAINING_KERNELS]
        target = registry.cpu_target.target_context.codegen().magic_tuple()
        # the index maps (signature, target, code hashes) to compiled code; numba empties it for a changed source
        return all(any(key[1] == target for key in d._cache._cache_file._load_index()) for d in dispatchers)
    except Exception:  # noqa: BLE001 - a cache laid out otherwise or unreadable: say nothing rather than guess
        return True


def compile_notice() -> str | None:
    """The one-line notice to log before training when the kernels are not compiled yet, else None."""
    if kernels_cached():
        return None
    where = numba.config.CACHE_DIR or "numba's cache"
    return (f"compiling the numba kernels on first use (about {COLD_COMPILE_SECONDS} s, once; "
            f"cached in {where})")
