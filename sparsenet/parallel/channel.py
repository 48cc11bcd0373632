"""Same-node phase 1 without messages: a worker's gradients and the server's replies in an MPI shared
window.

Phase 1 exchanges one gradient and one set of weights per update; as MPI messages that costs about
1 ms of interpreter work per update on a 2-core machine, 10 % of a FashionMNIST gradient. A channel
is one worker's slice of a shared window the server allocates (Transport.shared_window): two lanes,
`gradients` (worker -> server) and `replies` (server -> worker). A lane's writer fills float32
arrays in place (the worker's backward kernel, the server's momentum step) and posts them with a few
numbers by bumping a sequence number; its reader polls that number between sleeps
(Transport.recv_bundle with ready=) and takes the arrays where they were written.

Two buffers per lane suffice because both sides alternate: gradient n goes into buffer n % 2, and
the worker writes gradient n + 2 there only after the server answered gradient n (with pipelining
it computes gradient n + 1 meanwhile, into the other buffer); reply n goes into buffer n % 2, and
the worker stops reading it before it sends the gradient that reply n + 2 answers. Whatever does
not fit a lane (a model that grew) goes through messages.
Memory ordering: a writer calls `sync` (MPI_Win_sync) between its data and its sequence number, a
reader between seeing the number and reading the data.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .wire import aligned_layout

PAGE = 4096
ITEMSIZE = 4  # lanes carry float32
BUFFERS = 4  # per channel: two per lane
# A lane's control block, int64 words: the sequence number, float64 numbers posted with the arrays,
# how many arrays, then their sizes.
SEQ, WORDS, COUNT, SIZES = 0, 1, 7, 8
MAX_WORDS = COUNT - WORDS


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


def _pages(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


def shape(sizes: Sequence[int]) -> dict:
    """Geometry of a channel for float32 arrays of `sizes` (weights then biases): n_layers, capacity
    (bytes per buffer) and nbytes (the whole channel, whole pages)."""
    n_layers, capacity = len(sizes) // 2, _pages(layout(sizes)[1])
    return {"n_layers": n_layers, "capacity": capacity, "nbytes": 2 * Lane.nbytes(2 * n_layers, capacity)}


def in_window(memory: np.ndarray, place: dict, sync: Callable[[], None]) -> "Channel":
    """The channel at `place` (shape(...) plus its byte "offset") in the shared window `memory`."""
    start = place["offset"]
    return Channel(memory[start:start + place["nbytes"]], place["n_layers"], place["capacity"], sync)


class Lane:
    """One direction in `memory` (uint8, Lane.nbytes(max_arrays, capacity) long): a control block and
    two buffers of `capacity` bytes, for up to `max_arrays` float32 arrays. The writer fills arrays(sizes)
    and post()s; the reader checks ready() and take()s. `sync`: the window's memory barrier."""

    def __init__(self, memory: np.ndarray, max_arrays: int, capacity: int, sync: Callable[[], None]):
        control_bytes = _pages(8 * (SIZES + max_arrays))
        self.control = memory[:control_bytes].view(np.int64)
        self.buffers = [memory[control_bytes + i * capacity:control_bytes + (i + 1) * capacity] for i in range(2)]
        self.max_arrays, self.capacity, self.sync = max_arrays, capacity, sync
        self.posted = self.taken = 0
        self._views: dict[tuple[int, tuple[int, ...]], list[np.ndarray]] = {}

    @staticmethod
    def nbytes(max_arrays: int, capacity: int) -> int:
        return _pages(8 * (SIZES + max_arrays)) + 2 * capacity

    def fits(self, sizes: Sequence[int]) -> bool:
        return len(sizes) <= self.max_arrays and layout(sizes)[1] <= self.capacity

    def _arrays(self, index: int, sizes: Sequence[int]) -> list[np.ndarray]:
        key = (index, tuple(sizes))
        arrays = self._views.get(key)
        if arrays is None:  # the same shapes over and over: make the views once
            if len(self._views) >= 8:
                self._views.clear()
            arrays = self._views[key] = views(self.buffers[index], sizes)
        return arrays

    # ----------------------------------------------------------------- writer

    def arrays(self, sizes: Sequence[int]) -> list[np.ndarray]:
        """Where the next post's arrays go: float32 arrays of `sizes` in the next buffer."""
        return self._arrays(self.posted % 2, sizes)

    def post(self, words: Sequence[float], sizes: Sequence[int]) -> None:
        """Hand the arrays written into arrays(sizes) to the reader, with up to MAX_WORDS numbers
        (float64: integers below 2**53 exactly)."""
        if len(sizes) > self.max_arrays or len(words) > MAX_WORDS:
            raise ValueError(f"{len(sizes)} arrays and {len(words)} words posted to a lane made for "
                             f"{self.max_arrays} and {MAX_WORDS}")
        c = self.control
        c[WORDS:WORDS + len(words)].view(np.float64)[:] = words
        c[COUNT], c[SIZES:SIZES + len(sizes)] = len(sizes), sizes
        self.posted += 1
        self.sync()
        c[SEQ] = self.posted

    # ----------------------------------------------------------------- reader

    def ready(self) -> bool:
        return self.control[SEQ] > self.taken

    def take(self) -> tuple[list[float], list[np.ndarray]]:
        """(the MAX_WORDS numbers, the arrays) of the next post; call when ready(). The arrays stay
        valid until the writer's post after next."""
        self.sync()
        c = self.control
        sizes = c[SIZES:SIZES + min(int(c[COUNT]), self.max_arrays + 1)].tolist()
        if not self.fits(sizes):
            raise ValueError(f"a lane post of {sizes} float32 values overflows its {self.capacity}-byte buffer")
        index = self.taken % 2
        self.taken += 1
        return c[WORDS:COUNT].view(np.float64).tolist(), self._arrays(index, sizes)


class Channel:
    """One worker's channel in `memory` (uint8, shape(...)["nbytes"] long), seen by the server and that
    worker: lanes `gradients` (worker -> server) and `replies` (server -> worker), each for the
    2 * n_layers arrays of weights then biases. The server zeroes it first (clear)."""

    def __init__(self, memory: np.ndarray, n_layers: int, capacity: int, sync: Callable[[], None]):
        lane_bytes = Lane.nbytes(2 * n_layers, capacity)
        if memory.size < 2 * lane_bytes:
            raise ValueError(f"a {memory.size}-byte window slice cannot hold a channel of {capacity}-byte buffers")
        self.sync = sync
        self.gradients, self.replies = (Lane(memory[i * lane_bytes:(i + 1) * lane_bytes], 2 * n_layers, capacity, sync)
                                        for i in range(2))

    def clear(self) -> None:
        """Zero the control blocks (a new window's contents are undefined)."""
        for lane in (self.gradients, self.replies):
            lane.control[:] = 0
        self.sync()

    def fits(self, sizes: Sequence[int]) -> bool:
        return self.gradients.fits(sizes)
