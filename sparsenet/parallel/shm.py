"""Same-node mailboxes: packed bundles between ranks on one machine travel through shared memory.

MPI moves a packed bundle between two ranks of one node with a kernel copy (CMA) into a receive
buffer that the receiver then reads again; for a 0.6 MB FashionMNIST gradient that costs the
server more CPU than the momentum step it feeds. Here the sender packs the bundle straight into a
slot: a file in /dev/shm mapped by both ranks. The MPI message carries only a pointer (slot, size, file name), and
the receiver's arrays are views of the slot: no copy at all on its side.

A slot is busy from the sender's pack until the receiver has dropped every array of that bundle
(checked with sys.getrefcount, as BufferPool does); the receiver then returns it with a 16-byte
acknowledgement on a private duplicate communicator, so acks never match an application's receive.
Each sender keeps at most SLOTS slots per destination; with none free, a bundle larger than
`max_bytes`, or /dev/shm unavailable or full, the bundle goes through MPI as before: the mailbox
never blocks and never changes what is received.

Memory ordering: the sender's stores into the slot precede its MPI send of the pointer, and the
receiver reads the slot only after receiving it; MPICH's shared-memory queues order those with
release/acquire fences, as they do for any payload they carry.
Files: the receiver unlinks a segment as soon as it has mapped it (the mapping lives on), and the
sender unlinks whatever is left at close(), after giving pointers in flight a moment to arrive.
A job killed with a pointer in flight can leave a `sparsenet-*` file in /dev/shm; it holds no
open descriptor and may be deleted.
Other local users: every name carries 64 random bits (secrets), so nobody can pre-create a rank's next
file; files are created O_CREAT|O_EXCL|O_NOFOLLOW, mode 0o600, and a receiver opens a peer's file
with O_NOFOLLOW and maps it only if it is a regular file (a FIFO for doorbells) of our own uid.
Measured by scripts/bench_transport.py: CPU per gradient-and-weights round trip 0.68 ms instead
of 1.05 ms through MPI (phase 1 itself uses channel.py, see there).
"""

from __future__ import annotations

import mmap
import os
import select
import sys
import time
import secrets
import stat
from dataclasses import dataclass

import numpy as np

SLOTS = 3  # slots per destination: one being read, one in flight, one being packed
MIN_BYTES = 32 << 10  # smaller bundles go through MPI: its eager path copies them as fast
CLOSE_GRACE_SECONDS = 2.0  # how long close() lets receivers map segments whose pointers are in flight

ACK_TAG = 1
ALIGN = 4096  # segments grow in whole pages
DIRECTORY = "/dev/shm"


@dataclass
class _Outbox:
    """One slot a sender owns for one destination."""

    name: str
    array: np.ndarray  # uint8 over the whole mapping
    generation: int
    busy: bool = False


@dataclass
class _Inbox:
    """The receiver's mapping of one sender slot."""

    name: str
    array: np.ndarray
    generation: int
    held: bool = False  # views of it were handed out and no ack has been sent yet


class Mailboxes:
    """Shared-memory slots to and from the ranks of `local_ranks` (this rank's node)."""

    def __init__(self, rank: int, local_ranks: set[int], control_comm, max_bytes: int,
                 slots: int = SLOTS, directory: str = DIRECTORY):
        self.rank, self.local = rank, set(local_ranks) - {rank}
        self.control, self.max_bytes, self.slots, self.directory = control_comm, max_bytes, slots, directory
        self.prefix = f"sparsenet-{secrets.token_hex(8)}-r{rank}"
        self.out: dict[int, list[_Outbox]] = {}
        self.inbox: dict[tuple[int, int], _Inbox] = {}
        self.disabled: str | None = None if os.access(directory, os.W_OK) else f"{directory} is not writable"
        self.sent = 0  # bundles that went through a slot
        self.fallbacks = 0  # bundles to a local rank that went through MPI instead
        self._ack = np.zeros(2, dtype=np.int64)

    # ----------------------------------------------------------------- sender

    def reserve(self, dest: int, nbytes: int) -> tuple[int, _Outbox] | None:
        """A free slot of at least `nbytes` for `dest`, marked busy; None when the bundle must use MPI."""
        if dest not in self.local or self.disabled or nbytes < MIN_BYTES:
            return None
        if nbytes > self.max_bytes:
            self.fallbacks += 1
            return None
        self._take_acks(dest)
        boxes = self.out.setdefault(dest, [])
        free = [i for i, box in enumerate(boxes) if not box.busy]
        fits = [i for i in free if boxes[i].array.size >= nbytes]
        try:
            if fits:
                index = min(fits, key=lambda i: boxes[i].array.size)
            elif len(boxes) < self.slots:
                boxes.append(self._create(dest, len(boxes), nbytes, 0))
                index = len(boxes) - 1
            elif free:  # grow the smallest free slot
                index = min(free, key=lambda i: boxes[i].array.size)
                old = boxes[index]
                size = min(max(nbytes, 2 * old.array.size), self.max_bytes)
                boxes[index] = self._create(dest, index, size, old.generation + 1)
                _unlink(os.path.join(self.directory, old.name))
            else:
                self.fallbacks += 1
                return None
        except OSError as err:  # /dev/shm full or missing: MPI for the rest of the run
            self.disabled = f"shared memory unavailable ({err})"
            self.fallbacks += 1
            return None
        boxes[index].busy = True
        self.sent += 1
        return index, boxes[index]

    def _create(self, dest: int, index: int, nbytes: int, generation: int) -> _Outbox:
        name = f"{self.prefix}-to{dest}-s{index}-g{generation}-{secrets.token_hex(8)}"  # unguessable
        mapping = create_segment(os.path.join(self.directory, name), -(-nbytes // ALIGN) * ALIGN)
        return _Outbox(name, np.frombuffer(mapping, dtype=np.uint8), generation)

    def _take_acks(self, dest: int) -> None:
        """Mark the slots `dest` has acknowledged as free."""
        boxes = self.out.get(dest, [])
        while self.control.Iprobe(dest, ACK_TAG):
            self.control.Recv(self._ack, dest, ACK_TAG)  # mpi4py takes the int64 type from the array
            index, generation = int(self._ack[0]), int(self._ack[1])
            if index < len(boxes) and boxes[index].generation == generation:
                boxes[index].busy = False

    # --------------------------------------------------------------- receiver

    def open(self, source: int, index: int, generation: int, name: str, nbytes: int) -> np.ndarray:
        """The `nbytes` packed bytes `source` put in its slot `index`; acked once no view of it is left."""
        key = (source, index)
        box = self.inbox.get(key)
        if box is None or box.name != name:
            mapping = map_segment(os.path.join(self.directory, name))
            box = self.inbox[key] = _Inbox(name, np.frombuffer(mapping, dtype=np.uint8), generation)
        if nbytes > box.array.size:
            raise ValueError(f"rank {source} points at {nbytes} bytes in a {box.array.size}-byte slot")
        box.held = True
        return box.array[:nbytes]

    def release_unreferenced(self) -> None:
        """Acknowledge every received slot whose arrays are all gone."""
        for (source, index), box in self.inbox.items():
            if box.held and sys.getrefcount(box.array) == 2:  # the dataclass field + the argument
                box.held = False
                self._ack[:] = (index, box.generation)
                self.control.Send(self._ack, source, ACK_TAG)

    def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Unlink the segments this rank created (mappings end with their last array).

        A receiver unlinks a segment when it maps it; one not mapped yet (a pointer still in
        flight as this rank exits) gets up to `grace` seconds before it is removed.
        """
        unlink_once_mapped([os.path.join(self.directory, box.name) for boxes in self.out.values() for box in boxes],
                           grace)
        self.out.clear()


class Doorbells:
    """Wake-ups between ranks of one node: a FIFO per rank that its peers write a byte into after
    each send, so a waiting rank sleeps in select() until a message is there instead of polling.

    Create one per rank, exchange `name` (collective), then connect(names); see Transport.
    """

    def __init__(self, prefix: str, directory: str = DIRECTORY):
        self.name = f"{prefix}-bell-{secrets.token_hex(8)}"
        self.path = os.path.join(directory, self.name)
        os.mkfifo(self.path, 0o600)
        try:
            # O_RDWR keeps a writer open on our own FIFO, so select() never sees end-of-file.
            self.fd = open_own(self.path, os.O_RDWR, stat.S_ISFIFO)
        except OSError:
            _unlink(self.path)
            raise
        self.peers: dict[int, int] = {}

    def connect(self, names: dict[int, str], directory: str = DIRECTORY) -> None:
        """Open the FIFOs of the given peer ranks for writing."""
        for rank, name in names.items():
            self.peers[rank] = open_own(os.path.join(directory, name), os.O_WRONLY, stat.S_ISFIFO)

    def ring(self, rank: int) -> None:
        """Wake `rank` if it waits (a no-op for ranks without a doorbell)."""
        fd = self.peers.get(rank)
        if fd is not None:
            try:
                os.write(fd, b"\x01")
            except BlockingIOError:  # its FIFO is full of unread rings: it will wake anyway
                pass
            except OSError:  # it has closed its doorbell (it is exiting): stop ringing it
                os.close(self.peers.pop(rank))

    def wait(self, timeout: float) -> None:
        """Sleep until a peer rings or `timeout` seconds pass (the rings stay for drain())."""
        select.select([self.fd], [], [], timeout)

    def drain(self) -> bool:
        """Consume the rings so far; True if there were any."""
        rung = False
        try:
            while os.read(self.fd, 4096):
                rung = True
        except BlockingIOError:
            pass
        return rung

    def unlink(self) -> None:
        """Remove the FIFO's name once every peer has opened it (the pipe lives on)."""
        _unlink(self.path)

    def close(self) -> None:
        _unlink(self.path)
        for fd in [self.fd, *self.peers.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.peers.clear()


def create_segment(path: str, size: int) -> mmap.mmap:
    """A new file of `size` bytes at `path` (must not exist), mapped read-write; /dev/shm full: OSError now."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)  # fails now with ENOSPC instead of SIGBUS on first write
        return mmap.mmap(fd, size)
    except OSError:
        _unlink(path)
        raise
    finally:
        os.close(fd)


def map_segment(path: str) -> mmap.mmap:
    """Map a peer's segment read-write and remove its name (both ranks hold the mapping now)."""
    fd = open_own(path, os.O_RDWR, stat.S_ISREG)
    try:
        mapping = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    _unlink(path)
    return mapping


def open_own(path: str, flags: int, is_kind) -> int:
    """fd of `path` opened without following a symlink, if it is of `is_kind` (stat.S_ISREG,
    stat.S_ISFIFO) and belongs to this user; else OSError, the file left alone."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not is_kind(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        kind = "FIFO" if is_kind is stat.S_ISFIFO else "regular file"
        raise PermissionError(f"{path} is not a {kind} of uid {os.geteuid()} "
                              f"(mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}); refused")
    return fd


def unlink_once_mapped(paths: list[str], grace: float) -> None:
    """Remove the files a receiver has not mapped (and unlinked) yet, after waiting up to `grace` seconds."""
    deadline = time.monotonic() + grace
    while any(os.path.exists(p) for p in paths) and time.monotonic() < deadline:
        time.sleep(0.005)
    for path in paths:
        _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
