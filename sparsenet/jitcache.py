"""Where numba caches the compiled kernels, and whether they still need compiling.

numba would otherwise write its cache into the package's own __pycache__ whenever that is writable,
and load from it whatever it finds there: on a shared install another user's files, which numba
unpickles. The kernels are cached instead in a folder of the user's own (mode 0700), unless
NUMBA_CACHE_DIR says otherwise. Imported by sparsenet/__init__.py before any kernel is defined.
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


def kernels_cached() -> bool:
    """Whether numba's cache holds an index for the training kernels (False: the first epoch compiles)."""
    from .sparse import kernels

    try:
        dispatchers = [getattr(kernels, name) for name in TRAINING_KERNELS]
        return all(os.path.exists(d._cache._cache_file._index_path) for d in dispatchers)
    except AttributeError:  # a numba whose cache is laid out otherwise: say nothing rather than guess
        return True


def compile_notice() -> str | None:
    """The one-line notice to log before training when the kernels are not compiled yet, else None."""
    if kernels_cached():
        return None
    where = numba.config.CACHE_DIR or "numba's cache"
    return (f"compiling the numba kernels on first use (about {COLD_COMPILE_SECONDS} s, once; "
            f"cached in {where})")
