"""Same-node phase 1 without messages: a worker's gradients and the server's replies in an MPI shared
window.

Phase 1 exchanges one gradient and one set of weights per update; as MPI messages that costs about
1 ms of interpreter work per update on a 2-core machine, 10 % of a FashionMNIST gradient. A channel
is one worker's slice of a shared window the server allocates (Transport.shared_window): a control
block, two gradient and two weight buffers. The worker's backward kernel writes its gradient into a
gradient buffer and posts it by bumping a sequence number; the server's momentum step writes the new
weights into a weight buffer and posts them the same way; a waiting side polls the sequence number
between sleeps (Transport.recv_bundle with ready=).

Two buffers each way suffice because every side alternates: gradient n goes into buffer n % 2 and
the worker overwrites it only after the server answered gradient n (with pipelining the worker
computes gradient n + 1 meanwhile, into the other buffer); reply n goes into buffer n % 2 and the
worker stops reading it before it sends the gradient whose answer reply n + 2 is.
Whatever does not fit the buffers (a model that grew) goes through messages as before.
Memory ordering: a writer calls `sync` (MPI_Win_sync) between its data and its sequence number, a
reader between seeing the number and reading the data.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .wire import aligned_layout

BUFFERS = 4  # two gradient buffers (worker -> server), two weight buffers (server -> worker)
PAGE = 4096
ITEMSIZE = 4  # channels carry float32

# Control block, int64 words. The worker writes the first cache line and the sizes (third line on),
# the server the second.
W_SEQ, W_VERSION, W_SAMPLES, W_CORRECT, W_LOSS, W_ARRAYS = 0, 1, 2, 3, 4, 5  # W_LOSS holds float64 bits
S_SEQ, S_VERSION, S_EPOCH = 8, 9, 10
SIZES = 16  # W_ARRAYS array sizes of the posted gradient from here on


def layout(sizes: Sequence[int]) -> tuple[list[int], int]:
    """Byte offsets of float32 arrays of `sizes` elements in one buffer, and the bytes they need."""
    if min(sizes, default=0) < 0:
        raise ValueError(f"array sizes must be >= 0, got {list(sizes)}")
    return aligned_layout(0, [ITEMSIZE * n for n in sizes])


def views(base: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """float32 arrays of `sizes` elements laid out in the uint8 buffer `base` (views, no copy)."""
    offsets, end = layout(sizes)
    if end > base.size:
        raise ValueError(f"arrays of {end} bytes do not fit a {base.size}-byte channel buffer")
    return [base[off:off + ITEMSIZE * n].view(np.float32) for off, n in zip(offsets, sizes)]


def shape(sizes: Sequence[int]) -> dict:
    """Geometry of a channel for float32 arrays of `sizes` (weights then biases): n_layers, capacity
    (bytes per buffer) and nbytes (the whole channel, whole pages)."""
    n_layers = len(sizes) // 2
    capacity = -(-layout(sizes)[1] // PAGE) * PAGE
    return {"n_layers": n_layers, "capacity": capacity, "nbytes": _control_bytes(n_layers) + BUFFERS * capacity}


def _control_bytes(n_layers: int) -> int:
    """Bytes of the control block (whole pages): fixed words, then a weight and a bias size per layer."""
    return -(-8 * (SIZES + 2 * n_layers) // PAGE) * PAGE


def in_window(memory: np.ndarray, place: dict, sync: Callable[[], None]) -> "Channel":
    """The channel at `place` (shape(...) plus its byte "offset") in the shared window `memory`."""
    start = place["offset"]
    return Channel(memory[start:start + place["nbytes"]], place["n_layers"], place["capacity"], sync)


class Channel:
    """One worker's channel in `memory` (uint8, shape(...)["nbytes"] long), seen by the server and
    that worker; `sync`: the window's memory barrier. The server zeroes it first (clear)."""

    def __init__(self, memory: np.ndarray, n_layers: int, capacity: int, sync: Callable[[], None]):
        self.capacity, self.n_layers, self.sync = capacity, n_layers, sync
        control_bytes = _control_bytes(n_layers)
        if memory.size < control_bytes + BUFFERS * capacity:
            raise ValueError(f"a {memory.size}-byte window slice cannot hold a channel of {capacity}-byte buffers")
        self.control = memory[:control_bytes].view(np.int64)
        buffers = [memory[control_bytes + i * capacity:control_bytes + (i + 1) * capacity] for i in range(BUFFERS)]
        self.gradient_buffers, self.weight_buffers = buffers[:BUFFERS // 2], buffers[BUFFERS // 2:]
        self.gradients_posted = self.gradients_taken = 0
        self.replies_posted = self.replies_taken = 0
        self._views: dict[tuple[int, int, tuple[int, ...]], list[np.ndarray]] = {}

    def clear(self) -> None:
        """Zero the control block (a new window's contents are undefined)."""
        self.control[:] = 0
        self.sync()

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
        c = self.control
        c[W_VERSION], c[W_SAMPLES], c[W_CORRECT], c[W_ARRAYS] = version, samples, correct, sizes.shape[0]
        c[W_LOSS:W_LOSS + 1].view(np.float64)[0] = loss
        c[SIZES:SIZES + sizes.shape[0]] = sizes
        self.gradients_posted += 1
        self.sync()
        c[W_SEQ] = self.gradients_posted

    def reply_ready(self) -> bool:
        return self.control[S_SEQ] > self.replies_taken

    def take_reply(self, sizes: Sequence[int]) -> tuple[int, int, list[np.ndarray]]:
        """(version, epoch, weight and bias arrays of `sizes`) of the next reply; call when reply_ready()."""
        self.sync()
        index = self.replies_taken % 2
        self.replies_taken += 1
        c = self.control
        return int(c[S_VERSION]), int(c[S_EPOCH]), self._arrays(1, index, sizes)

    # ----------------------------------------------------------------- server

    def gradient_ready(self) -> bool:
        return self.control[W_SEQ] > self.gradients_taken

    def take_gradient(self) -> tuple[int, int, float, int, list[np.ndarray]]:
        """(version, samples, loss, correct, gradient arrays) of the next gradient; call when gradient_ready()."""
        self.sync()
        index = self.gradients_taken % 2
        self.gradients_taken += 1
        c = self.control
        sizes = c[SIZES:SIZES + int(c[W_ARRAYS])].tolist()
        if not self.fits(sizes):
            raise ValueError(f"a channel gradient of {sizes} float32 values overflows its {self.capacity}-byte buffer")
        loss = float(c[W_LOSS:W_LOSS + 1].view(np.float64)[0])
        return int(c[W_VERSION]), int(c[W_SAMPLES]), loss, int(c[W_CORRECT]), self._arrays(0, index, sizes)

    def reply_arrays(self, sizes: Sequence[int]) -> list[np.ndarray]:
        """Where the next reply goes: float32 arrays of `sizes` in the next weight buffer."""
        return self._arrays(1, self.replies_posted % 2, sizes)

    def post_reply(self, version: int, epoch: int) -> None:
        """Hand the weights written into reply_arrays(...) to the worker."""
        self.control[S_VERSION], self.control[S_EPOCH] = version, epoch
        self.replies_posted += 1
        self.sync()
        self.control[S_SEQ] = self.replies_posted
