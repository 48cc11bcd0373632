"""Same-node lanes: float32 arrays that one rank fills in shared memory and its peer reads in place.

A mailbox slot (shm.py) still costs the sender a copy: the bundle is packed into the slot. In
phase 1 that copy happens twice per update (the worker's gradient, the server's new weights),
on a 2-core machine where every 0.1 ms counts. A lane removes it: the sender takes a free buffer
of its lane to `dest`, computes straight into its arrays (the worker's backward kernel writes the
gradient there) and sends a record over MPI: lane generation, buffer, array sizes and the JSON
metadata. The receiver's arrays are views of its own mapping of that buffer.

Release without extra messages: a receiver knows which buffers it still has views of
(sys.getrefcount of the buffer's base array, as BufferPool does) and lists the ones it has let
go of in the next record it sends back to that peer. Phase 1 sends a record each way per update,
so the acknowledgements ride for free (bundles carry none: after a topology change, say, the
next lane record catches up). A sender without a free buffer gets None and sends a
normal bundle instead: a lane never blocks and never changes what is received.

Layout of a buffer: the arrays one after another, each at a 64-byte aligned offset.
Files: `{prefix}-lane{dest}-g{generation}` in /dev/shm, one per lane and size (a lane grows by
doubling into a new generation). The receiver unlinks a file when it maps it and keeps an older
generation mapped while it still holds views of it; the sender unlinks whatever is left at close().
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .shm import ALIGN as PAGE, CLOSE_GRACE_SECONDS, DIRECTORY, create_segment, map_segment, unlink_once_mapped

BUFFERS = 3  # per lane: one the receiver holds, one in flight, one being filled
ALIGN = 64  # byte alignment of every array in a buffer
ITEMSIZE = 4  # lanes carry float32


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
        raise ValueError(f"arrays of {end} bytes do not fit a {base.size}-byte lane buffer")
    return [base[off:off + ITEMSIZE * n].view(np.float32) for off, n in zip(offsets, sizes)]


@dataclass
class _Outgoing:
    """The sender's side of the lane to one destination."""

    generation: int
    name: str
    bases: list[np.ndarray]  # uint8, one per buffer
    busy: list[bool]
    views: dict[tuple[int, tuple[int, ...]], list[np.ndarray]] = field(default_factory=dict)  # (buffer, sizes)

    @property
    def capacity(self) -> int:
        return self.bases[0].size


@dataclass
class _Incoming:
    """The receiver's mapping of one generation of the lane from one source."""

    bases: list[np.ndarray]
    held: set[int] = field(default_factory=set)  # buffers whose views were handed out, not yet released


@dataclass
class Ticket:
    """A buffer taken for one record: fill `arrays`, then send it with Transport.send_lane."""

    dest: int
    generation: int
    index: int
    sizes: list[int]
    arrays: list[np.ndarray]


class Lanes:
    """Lanes from this rank to the ranks of `peers` (same node) and back; `peers` maps rank -> file prefix."""

    def __init__(self, rank: int, prefix: str, peers: dict[int, str], max_bytes: int,
                 buffers: int = BUFFERS, directory: str = DIRECTORY):
        self.rank, self.prefix, self.peers = rank, prefix, dict(peers)
        self.max_bytes, self.buffers, self.directory = max_bytes, buffers, directory
        self.out: dict[int, _Outgoing] = {}
        self.inbound: dict[int, dict[int, _Incoming]] = {}  # source -> generation -> mapping
        self.created: list[str] = []  # file names, for close()
        self.disabled: str | None = None
        self.sent = 0  # records sent through a lane (counted by Transport.send_lane)
        self.misses = 0  # times no lane buffer was free (or fitting): the caller sent a bundle

    # ----------------------------------------------------------------- sender

    def take(self, dest: int, sizes: Sequence[int]) -> Ticket | None:
        """A free buffer to `dest` with float32 arrays of `sizes` elements, marked busy; None: send a bundle."""
        if dest not in self.peers or self.disabled:
            return None
        sizes = [int(n) for n in sizes]
        nbytes = max(layout(sizes)[1], ALIGN)
        if nbytes > self.max_bytes:
            self.misses += 1
            return None
        lane = self.out.get(dest)
        try:
            if lane is None or lane.capacity < nbytes:
                lane = self.out[dest] = self._create(dest, nbytes, lane)
        except OSError as err:  # /dev/shm full or missing: bundles for the rest of the run
            self.disabled = f"shared memory unavailable ({err})"
            self.misses += 1
            return None
        free = [i for i, busy in enumerate(lane.busy) if not busy]
        if not free:
            self.misses += 1
            return None
        index = free[0]
        lane.busy[index] = True
        key = (index, tuple(sizes))
        arrays = lane.views.get(key)
        if arrays is None:  # a run sends the same shapes over and over: make the views once
            if len(lane.views) >= 4 * self.buffers:
                lane.views.clear()
            arrays = lane.views[key] = views(lane.bases[index], sizes)
        return Ticket(dest, lane.generation, index, sizes, list(arrays))

    def _create(self, dest: int, nbytes: int, old: _Outgoing | None) -> _Outgoing:
        """A new generation of the lane to `dest` with buffers of at least `nbytes` (twice the old, capped)."""
        generation = 0 if old is None else old.generation + 1
        capacity = nbytes if old is None else min(max(nbytes, 2 * old.capacity), self.max_bytes)
        capacity = -(-capacity // PAGE) * PAGE
        name = f"{self.prefix}-lane{dest}-g{generation}"
        mapping = create_segment(os.path.join(self.directory, name), capacity * self.buffers)
        self.created.append(name)
        bases = [np.frombuffer(mapping, dtype=np.uint8, count=capacity, offset=i * capacity)
                 for i in range(self.buffers)]
        return _Outgoing(generation, name, bases, [False] * self.buffers)

    def acknowledge(self, source: int, released: Sequence[tuple[int, int]]) -> None:
        """Free the buffers of our lane to `source` that it reports released ((generation, buffer) pairs)."""
        lane = self.out.get(source)
        if lane is None:
            return
        for generation, index in released:
            if generation == lane.generation and 0 <= index < len(lane.busy):
                lane.busy[index] = False

    # --------------------------------------------------------------- receiver

    def open(self, source: int, generation: int, index: int, sizes: Sequence[int]) -> list[np.ndarray]:
        """Views of the arrays `source` put in buffer `index` of its lane generation `generation`."""
        generations = self.inbound.setdefault(source, {})
        lane = generations.get(generation)
        if lane is None:
            if source not in self.peers:
                raise ValueError(f"rank {source} is not a same-node peer of rank {self.rank}")
            mapping = map_segment(os.path.join(self.directory, f"{self.peers[source]}-lane{self.rank}-g{generation}"))
            capacity = len(mapping) // self.buffers
            lane = generations[generation] = _Incoming([
                np.frombuffer(mapping, dtype=np.uint8, count=capacity, offset=i * capacity)
                for i in range(self.buffers)])
            for old in [g for g in generations if g < generation]:  # superseded; kept while views of it live
                generations[old].held = {i for i in generations[old].held
                                         if sys.getrefcount(generations[old].bases[i]) > 2}
                if not generations[old].held:
                    del generations[old]
        if not 0 <= index < len(lane.bases):
            raise ValueError(f"rank {source} points at buffer {index} of a {len(lane.bases)}-buffer lane")
        lane.held.add(index)
        return views(lane.bases[index], sizes)

    def released(self, source: int) -> list[tuple[int, int]]:
        """(generation, buffer) of the buffers from `source` that no array refers to any more; each reported once."""
        out = []
        generations = self.inbound.get(source, {})
        for generation, lane in list(generations.items()):
            done = [i for i in lane.held if sys.getrefcount(lane.bases[i]) == 2]  # the list + the argument
            lane.held.difference_update(done)
            out += [(generation, i) for i in done]
            if not lane.held and generation < max(generations):  # superseded and unused: unmap it
                del generations[generation]
        return out

    def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Unlink the lane files this rank created; one not yet mapped by its receiver gets `grace` seconds."""
        unlink_once_mapped([os.path.join(self.directory, name) for name in self.created], grace)
        self.out.clear()
        self.created.clear()
