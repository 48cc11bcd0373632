"""Same-node phase-1 channels: a worker's gradients and the server's replies in shared memory, no MPI.

Phase 1 exchanges one gradient and one set of weights per update. As messages, even ones that only
point at arrays written in place in /dev/shm (the "lanes" this module replaced), that cost about
1 ms of interpreter work per update on a 2-core machine, 10 % of a FashionMNIST gradient. A channel is one /dev/shm file per (server, worker) pair holding a control
block and two gradient and two weight buffers. The worker's backward kernel writes its gradient
into a gradient buffer and posts it by bumping a sequence number; the server's momentum step
writes the new weights into a weight buffer and posts them the same way; each rings the other's
doorbell (shm.Doorbells), so a waiting side sleeps. No message objects, no JSON, no MPI call.

Two buffers each way suffice because every side alternates: gradient n goes into buffer n % 2 and
the worker overwrites it only after the server answered gradient n (with pipelining the worker
computes gradient n + 1 meanwhile, into the other buffer); reply n goes into buffer n % 2 and the
worker stops reading it before it sends the gradient whose answer reply n + 2 is.
Whatever does not fit the buffers (a model that grew) goes through the transport as before.

Memory ordering: a sequence number is posted with an atomic release store (_post_gradient,
_post_reply) and read with an atomic acquire load (_observe), so whatever was written before a
post is seen by the side that sees the post, on any CPU, not only on x86.
"""

from __future__ import annotations

import os
import secrets
from typing import Sequence

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .shm import ALIGN as PAGE, DIRECTORY, create_segment, map_segment

BUFFERS = 4  # two gradient buffers (worker -> server), two weight buffers (server -> worker)
ALIGN = 64  # byte alignment of every array in a buffer
ITEMSIZE = 4  # channels carry float32

# Control block, int64 words. The worker writes the first cache line and the sizes (third line on),
# the server the second.
W_SEQ, W_VERSION, W_SAMPLES, W_CORRECT, W_LOSS, W_ARRAYS = 0, 1, 2, 3, 4, 5  # W_LOSS holds float64 bits
S_SEQ, S_VERSION, S_EPOCH = 8, 9, 10
N_LAYERS, CAPACITY, MAGIC_WORD = 13, 14, 15  # written once by the creator: layers, bytes per buffer, MAGIC
SIZES = 16  # W_ARRAYS array sizes of the posted gradient from here on
MAGIC = 0x5350434830000001  # "SPCH0", layout version 1


def layout(sizes: Sequence[int]) -> tuple[list[int], int]:
    """Byte offsets of float32 arrays of `sizes` elements in one buffer, and the bytes they need."""
    offsets, end = [], 0
    for n in sizes:
        if n < 0:
            raise ValueError(f"array sizes must be >= 0, got {n}")
        offsets.append(end)
        end += -(-(ITEMSIZE * n) // ALIGN) * ALIGN
    return offsets, end


def views(base: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """float32 arrays of `sizes` elements laid out in the uint8 buffer `base` (views, no copy)."""
    offsets, end = layout(sizes)
    if end > base.size:
        raise ValueError(f"arrays of {end} bytes do not fit a {base.size}-byte channel buffer")
    return [base[off:off + ITEMSIZE * n].view(np.float32) for off, n in zip(offsets, sizes)]


def _element_pointer(context, builder, signature, args):
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    index = context.cast(builder, args[1], signature.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [index], wraparound=False)


@intrinsic
def _store_release(typingctx, array, index, value):
    """array[index] = value as an atomic store with release ordering (int64 arrays)."""
    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
        builder.store_atomic(value, _element_pointer(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@intrinsic
def _load_acquire(typingctx, array, index):
    """array[index] as an atomic load with acquire ordering (int64 arrays)."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_element_pointer(context, builder, signature, args), "acquire", 8)
    return array.dtype(array, index), codegen


@njit(cache=True)
def _post_gradient(control, seq, version, samples, correct, loss, sizes):
    control[W_VERSION] = version
    control[W_SAMPLES] = samples
    control[W_CORRECT] = correct
    control[W_LOSS:W_LOSS + 1].view(np.float64)[0] = loss
    control[W_ARRAYS] = sizes.shape[0]
    control[SIZES:SIZES + sizes.shape[0]] = sizes
    _store_release(control, W_SEQ, seq)


@njit(cache=True)
def _post_reply(control, seq, version, epoch):
    control[S_VERSION] = version
    control[S_EPOCH] = epoch
    _store_release(control, S_SEQ, seq)


@njit(cache=True)
def _observe(control, index):
    return _load_acquire(control, index)


def load_kernels() -> None:
    """Load (or compile) the numba helpers on a scratch control block, before the first update needs them."""
    control = np.zeros(SIZES + 2, dtype=np.int64)
    _post_gradient(control, 1, 0, 0, 0, 0.0, np.zeros(2, dtype=np.int64))
    _post_reply(control, 1, 0, 0)
    _observe(control, W_SEQ)


class Channel:
    """One worker's channel; the server creates it (create) and the worker maps it (attach)."""

    def __init__(self, path: str, mapping, capacity: int, n_layers: int):
        self.path, self.capacity, self.n_layers = path, capacity, n_layers
        control_bytes = self.control_bytes(n_layers)
        base = np.frombuffer(mapping, dtype=np.uint8)
        self.control = base[:control_bytes].view(np.int64)
        buffers = [base[control_bytes + i * capacity:control_bytes + (i + 1) * capacity] for i in range(BUFFERS)]
        self.gradient_buffers, self.weight_buffers = buffers[:BUFFERS // 2], buffers[BUFFERS // 2:]
        self.gradients_posted = self.gradients_taken = 0
        self.replies_posted = self.replies_taken = 0
        self._views: dict[tuple[int, int, tuple[int, ...]], list[np.ndarray]] = {}

    @staticmethod
    def control_bytes(n_layers: int) -> int:
        """Bytes of the control block (whole pages): fixed words, then a weight and a bias size per layer."""
        return -(-8 * (SIZES + 2 * n_layers) // PAGE) * PAGE

    @classmethod
    def create(cls, path: str, sizes: Sequence[int]) -> "Channel":
        """A new channel file at `path` whose buffers hold float32 arrays of `sizes` (weights then biases)."""
        n_layers = len(sizes) // 2
        capacity = -(-layout(sizes)[1] // PAGE) * PAGE
        mapping = create_segment(path, cls.control_bytes(n_layers) + BUFFERS * capacity)
        channel = cls(path, mapping, capacity, n_layers)
        channel.control[[N_LAYERS, CAPACITY, MAGIC_WORD]] = n_layers, capacity, MAGIC
        return channel

    @classmethod
    def attach(cls, path: str) -> "Channel":
        """Map the channel the server created at `path` (and remove its name)."""
        name = os.path.basename(path)
        if not (name.startswith("sparsenet-") and "-chan" in name):
            raise ValueError(f"{path} is not named like a sparsenet channel")
        mapping = map_segment(path)
        head = np.frombuffer(mapping, dtype=np.int64, count=SIZES)
        n_layers, capacity = int(head[N_LAYERS]), int(head[CAPACITY])
        if int(head[MAGIC_WORD]) != MAGIC or len(mapping) != cls.control_bytes(n_layers) + BUFFERS * capacity:
            raise ValueError(f"{path} is not a sparsenet channel")
        return cls(path, mapping, capacity, n_layers)

    def fits(self, sizes: Sequence[int]) -> bool:
        return len(sizes) <= 2 * self.n_layers and layout(sizes)[1] <= self.capacity

    def _arrays(self, kind: int, index: int, sizes: Sequence[int]) -> list[np.ndarray]:
        key = (kind, index, tuple(sizes))
        arrays = self._views.get(key)
        if arrays is None:  # the same shapes over and over: make the views once
            if len(self._views) >= 16:
                self._views.clear()
            buffers = self.gradient_buffers if kind == 0 else self.weight_buffers
            arrays = self._views[key] = views(buffers[index], sizes)
        return arrays

    # ----------------------------------------------------------------- worker

    def gradient_arrays(self, sizes: Sequence[int]) -> list[np.ndarray]:
        """Where the next gradient goes: float32 arrays of `sizes` in the next gradient buffer."""
        return self._arrays(0, self.gradients_posted % 2, sizes)

    def post_gradient(self, version: int, samples: int, loss: float, correct: int, sizes: np.ndarray) -> None:
        """Hand the gradient written into gradient_arrays(sizes) (int64 `sizes`) to the server."""
        if sizes.shape[0] > 2 * self.n_layers:  # the control block has room for 2 sizes per layer
            raise ValueError(f"{sizes.shape[0]} arrays posted to a channel made for {2 * self.n_layers}")
        self.gradients_posted += 1
        _post_gradient(self.control, self.gradients_posted, version, samples, correct, loss, sizes)

    def reply_ready(self) -> bool:
        return _observe(self.control, S_SEQ) > self.replies_taken

    def take_reply(self, sizes: Sequence[int]) -> tuple[int, int, list[np.ndarray]]:
        """(version, epoch, weight and bias arrays of `sizes`) of the next reply; call when reply_ready()."""
        index = self.replies_taken % 2
        self.replies_taken += 1
        c = self.control
        return int(c[S_VERSION]), int(c[S_EPOCH]), self._arrays(1, index, sizes)

    # ----------------------------------------------------------------- server

    def gradient_ready(self) -> bool:
        return _observe(self.control, W_SEQ) > self.gradients_taken

    def take_gradient(self) -> tuple[int, int, float, int, list[np.ndarray]]:
        """(version, samples, loss, correct, gradient arrays) of the next gradient; call when gradient_ready()."""
        index = self.gradients_taken % 2
        self.gradients_taken += 1
        c = self.control
        n = int(c[W_ARRAYS])
        sizes = c[SIZES:SIZES + n].tolist()
        if not self.fits(sizes):
            raise ValueError(f"a channel gradient of {sizes} float32 values overflows its {self.capacity}-byte buffer")
        loss = float(c[W_LOSS:W_LOSS + 1].view(np.float64)[0])
        return int(c[W_VERSION]), int(c[W_SAMPLES]), loss, int(c[W_CORRECT]), self._arrays(0, index, sizes)

    def reply_arrays(self, sizes: Sequence[int]) -> list[np.ndarray]:
        """Where the next reply goes: float32 arrays of `sizes` in the next weight buffer."""
        return self._arrays(1, self.replies_posted % 2, sizes)

    def post_reply(self, version: int, epoch: int) -> None:
        """Hand the weights written into reply_arrays(...) to the worker."""
        self.replies_posted += 1
        _post_reply(self.control, self.replies_posted, version, epoch)


def channel_path(prefix: str, worker: int, directory: str = DIRECTORY) -> str:
    """A new, unguessable channel file name (64 random bits: nobody can create it first)."""
    return os.path.join(directory, f"{prefix}-chan{worker}-{secrets.token_hex(8)}")
