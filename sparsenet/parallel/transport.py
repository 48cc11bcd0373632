"""Point-to-point "bundles" over MPI: a JSON metadata dict plus typed numpy arrays.

The only module that imports mpi4py, and it does so on first use (a Transport, ANY_SOURCE or
ANY_TAG), so importing it never starts MPI. Arrays travel as raw bytes (uppercase Isend/Irecv),
never pickled, in chunks of at most `chunk_bytes`, so bundles and arrays over 2 GiB work.

Wire format of one bundle, all messages from one source with one tag (MPI keeps them in order):
  1. header: int64 [MAGIC, VERSION, chunk_bytes, n_arrays, meta_nbytes,
                    then per array: dtype code, ndim, dims padded to MAX_NDIM with 0, nbytes]
  2. the UTF-8 JSON metadata, in chunks
  3. each array's bytes (C order), in chunks
A bundle that fits in one chunk travels instead as ONE message: the same header (with
MAGIC_PACKED), the metadata, then each array at a 64-byte aligned offset; the receiver's arrays
are views of that one buffer. One message instead of n + 2 saves a rendezvous per array.
Between ranks of one node, enable_shared_memory() sends packed bundles through /dev/shm slots
(shm.py): the MPI message is then only a pointer, and receivers' arrays are views of the slot.
Phase 1's gradients and weights between same-node ranks skip bundles altogether: open_channel /
attach_channel give both ranks a channel (channel.py) they read and write in place, and
recv_unless waits for a bundle or a channel post in one sleep.
Waiting never spins: probes and tests alternate with sleeps that back off from 20 µs to
`max_sleep`, because MPICH's blocking calls busy-poll and ranks may share cores; with shared
memory on, a rank waiting for same-node senders sleeps in select() until one rings its doorbell.
Not thread-safe: use one Transport per communicator from one thread.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SparsenetError
from .shm import CLOSE_GRACE_SECONDS, unlink_once_mapped

MAGIC = 0x53504E5442554E31  # "SPNTBUN1": header of a bundle sent in pieces
MAGIC_PACKED = 0x53504E544255504B  # "SPNTBUPK": a whole bundle in one message
MAGIC_SHARED = 0x53504E5442555348  # "SPNTBUSH": a pointer to a packed bundle in a shared-memory slot
ALIGN = 64  # byte alignment of each array inside a packed message
VERSION = 1
MAX_NDIM = 4
DEFAULT_CHUNK_BYTES = 1 << 30
MIN_CHUNK_BYTES = 1024
CHUNK_LIMIT = 1 << 31  # chunk_bytes must stay below this: MPI counts are C ints
MAX_ARRAYS = 1 << 16
MAX_META_BYTES = 1 << 30
MIN_SLEEP = 20e-6
DEFAULT_MAX_SLEEP = 500e-6  # longest sleep between polls: bounds the latency a wait adds
IDLE_AFTER = 0.02  # a wait this long is idle: its sleeps may grow to IDLE_SLEEP
IDLE_SLEEP = 5e-3
BELL_TIMEOUT = 0.05  # longest doorbell sleep: bounds the cost of a sender that never rings
PROBES_PER_WAKE = 3  # MPICH may need a second progress call to see a message that has arrived
RING_GRACE = 2e-3  # after a ring, poll this long for its message before sleeping on the doorbell again
TRANSFER_SPIN = 2e-3  # seconds a transfer under way yields instead of sleeping
WINDOW = 64  # pieces in flight per bundle: bounds request count when chunks are tiny
LAYOUT_CACHE = 64  # decoded packed-message headers kept per Transport
POOL_BUFFERS = 4  # packed-message buffers a Transport keeps for reuse
POOL_MAX_BYTES = 16 << 20  # larger packed messages get a fresh buffer (and give it back to the OS)
DEFAULT_SHARED_MAX_BYTES = 256 << 20  # largest bundle sent through a same-node shared-memory slot

_HEAD = 5  # magic, version, chunk_bytes, n_arrays, meta_nbytes
_PER_ARRAY = 3 + MAX_NDIM  # dtype code, ndim, dims..., nbytes
_POINTER_WORDS = 6  # magic, version, slot, generation, nbytes, name length; then the name
NAME_BYTES = 128  # room for a doorbell's file name in the start-up exchange
DTYPES = tuple(np.dtype(name) for name in (
    "bool", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "float32", "float64"))
_CODE = {dt: code for code, dt in enumerate(DTYPES, start=1)}

_MPI = None


def _mpi():
    """The mpi4py.MPI module, imported (and MPI initialised) on first call; stop signals arriving
    meanwhile stay recorded (signals.mpi_init_guard)."""
    global _MPI
    if _MPI is None:
        from ..signals import mpi_init_guard

        with mpi_init_guard():
            from mpi4py import MPI

        _MPI = MPI
    return _MPI


def __getattr__(name: str) -> Any:
    # ANY_SOURCE / ANY_TAG differ between MPI libraries, so they come from mpi4py, lazily.
    if name in ("ANY_SOURCE", "ANY_TAG"):
        return getattr(_mpi(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TransportError(RuntimeError):
    """A received message is not a well-formed bundle (wrong magic, version, dtype or size)."""


class SilentRankError(SparsenetError, TimeoutError):
    """A wait heard nothing from a rank for the transport's `silence_timeout` (parallel.timeout_s)."""


@dataclass
class Bundle:
    """One received message: sender rank, tag, metadata, arrays and its total size in bytes."""

    source: int
    tag: int
    meta: dict
    arrays: list[np.ndarray] = field(default_factory=list)
    nbytes: int = 0


def validate_chunk_bytes(chunk_bytes: int) -> int:
    """Return chunk_bytes (bytes per MPI message) if 1024 <= chunk_bytes < 2**31, else raise ValueError."""
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, (int, np.integer)):
        raise ValueError(f"chunk_bytes must be an integer, got {chunk_bytes!r}")
    if not MIN_CHUNK_BYTES <= chunk_bytes < CHUNK_LIMIT:
        raise ValueError(f"chunk_bytes must satisfy {MIN_CHUNK_BYTES} <= chunk_bytes < 2**31 "
                         f"(MPI counts are 32-bit), got {chunk_bytes}")
    return int(chunk_bytes)


class _Backoff:
    """Polling pace: yield the core for `spin` seconds, then sleeps doubling from MIN_SLEEP to max_sleep.

    Yielding (not spinning) keeps a transfer that is under way fast without starving a rank
    that shares the core; sleeping keeps a wait cheap. A wait longer than IDLE_AFTER is idle
    rather than a hand-off, so its sleeps may grow to IDLE_SLEEP.
    """

    def __init__(self, max_sleep: float, spin: float = 0.0):
        self.max_sleep = max_sleep
        self.delay = min(MIN_SLEEP, max_sleep)
        self.start = time.perf_counter()
        self.spin_until = self.start + spin

    def sleep(self, limit: float | None = None) -> None:
        """Yield while spinning, else sleep the current delay (at most `limit` seconds) and double it."""
        now = time.perf_counter()
        if now < self.spin_until:
            os.sched_yield()
            return
        time.sleep(self.delay if limit is None else max(0.0, min(self.delay, limit)))
        cap = max(self.max_sleep, IDLE_SLEEP) if now - self.start > IDLE_AFTER else self.max_sleep
        self.delay = min(2 * self.delay, cap)


def _wait_all(requests: list, max_sleep: float, spin: float = 0.0, timeout: float | None = None,
              silent: Callable[[], str] | None = None) -> None:
    """Complete MPI requests by polling Testall (Waitall would busy-poll the core); after `timeout`
    seconds, SilentRankError(silent())."""
    backoff = _Backoff(max_sleep, spin)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not _mpi().Request.Testall(requests):
        if deadline is not None and time.monotonic() > deadline:
            raise SilentRankError(silent() if silent else f"MPI requests not complete after {timeout} s")
        backoff.sleep()


def _chunks(flat: np.ndarray, chunk_bytes: int) -> Iterator[np.ndarray]:
    """Consecutive views of a flat uint8 array, each at most chunk_bytes long."""
    for start in range(0, flat.size, chunk_bytes):
        yield flat[start:start + chunk_bytes]


def _byte_view(array: np.ndarray) -> np.ndarray:
    """Flat uint8 view of a C-contiguous array's memory (no copy)."""
    return array.reshape(-1).view(np.uint8)


def _prepare(array: Any) -> np.ndarray:
    """A native-endian, C-contiguous array of a supported dtype; copies only when needed."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in _CODE:
        names = ", ".join(dt.name for dt in DTYPES)
        raise TypeError(f"unsupported dtype {array.dtype} (supported: {names})")
    if array.ndim > MAX_NDIM:
        raise ValueError(f"arrays may have at most {MAX_NDIM} dimensions, got shape {array.shape}")
    if not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return array


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays in metadata become plain JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON bytes of a metadata mapping (never pickle)."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    data = json.dumps(dict(meta), separators=(",", ":"), default=_json_default).encode("utf-8")
    if len(data) > MAX_META_BYTES:
        raise ValueError(f"metadata is {len(data)} bytes; the limit is {MAX_META_BYTES}")
    return data


def encode_header(chunk_bytes: int, meta_nbytes: int, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The int64 header describing a bundle (see the module docstring)."""
    if len(arrays) > MAX_ARRAYS:
        raise ValueError(f"a bundle holds at most {MAX_ARRAYS} arrays, got {len(arrays)}")
    words = [MAGIC, VERSION, chunk_bytes, len(arrays), meta_nbytes]
    for array in arrays:  # plain Python ints, one numpy call at the end: this runs for every message
        words += [_CODE[array.dtype], array.ndim, *array.shape, *[0] * (MAX_NDIM - array.ndim), array.nbytes]
    return np.array(words, dtype=np.int64)


def decode_header(raw: np.ndarray) -> tuple[int, int, list[tuple[np.dtype, tuple[int, ...]]]]:
    """Validate a received header (uint8 bytes); return (chunk_bytes, meta_nbytes, [(dtype, shape)])."""
    if raw.size % 8 or raw.size < 8 * _HEAD:
        raise TransportError(f"malformed bundle header: {raw.size} bytes is not a valid header size")
    words = raw.view(np.int64).tolist()
    magic, version, chunk_bytes, n_arrays, meta_nbytes = words[:_HEAD]
    if magic not in (MAGIC, MAGIC_PACKED):
        raise TransportError(f"malformed bundle header: magic {magic:#x} != {MAGIC:#x} "
                             "(a message not sent by Transport.send_bundle?)")
    if version != VERSION:
        raise TransportError(f"bundle protocol version {version} received, this side speaks {VERSION}")
    if not MIN_CHUNK_BYTES <= chunk_bytes < CHUNK_LIMIT:
        raise TransportError(f"malformed bundle header: chunk_bytes {chunk_bytes} out of range")
    if not 0 <= n_arrays <= MAX_ARRAYS or len(words) != _HEAD + _PER_ARRAY * n_arrays:
        raise TransportError(f"malformed bundle header: {n_arrays} arrays but {len(words)} header words")
    if not 0 <= meta_nbytes <= MAX_META_BYTES:
        raise TransportError(f"malformed bundle header: metadata size {meta_nbytes} out of range")
    specs = [_decode_array_spec(i, words[_HEAD + i * _PER_ARRAY:_HEAD + (i + 1) * _PER_ARRAY])
             for i in range(n_arrays)]
    return chunk_bytes, meta_nbytes, specs


def _decode_array_spec(index: int, row: list[int]) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) of array `index` from its header row, checking every field."""
    code, ndim, dims, nbytes = row[0], row[1], row[2:2 + MAX_NDIM], row[-1]
    if not 1 <= code <= len(DTYPES):
        raise TransportError(f"malformed bundle header: array {index} has unknown dtype code {code}")
    if not 0 <= ndim <= MAX_NDIM or any(d < 0 for d in dims) or any(dims[ndim:]):
        raise TransportError(f"malformed bundle header: array {index} has ndim {ndim}, dims {dims}")
    dtype, shape = DTYPES[code - 1], tuple(dims[:ndim])
    if math.prod(shape) * dtype.itemsize != nbytes:
        raise TransportError(f"malformed bundle header: array {index} of {dtype} {shape} "
                             f"claims {nbytes} bytes")
    return dtype, shape


def _packed_layout(header_nbytes: int, meta_nbytes: int, sizes: list[int]) -> tuple[list[int], int]:
    """Aligned offsets of the arrays in a packed message, and its total size."""
    offset = _aligned(header_nbytes + meta_nbytes)
    offsets = []
    for size in sizes:
        offsets.append(offset)
        offset = _aligned(offset + size)
    return offsets, offset


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class BufferPool:
    """Reusable uint8 buffers for packed messages.

    A fresh buffer per message costs a page fault per 4 KiB on first touch, on every message.
    A pooled buffer is handed out again only when nothing references it any more: no pending
    send and no array view of a received bundle (checked with sys.getrefcount), so reuse can
    never overwrite live data.
    """

    def __init__(self, max_buffers: int = POOL_BUFFERS, max_bytes: int = POOL_MAX_BYTES):
        self.max_buffers, self.max_bytes = max_buffers, max_bytes
        self.buffers: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray:
        """An uninitialised uint8 array of exactly `nbytes` (a view of a pooled buffer when one is free)."""
        if nbytes > self.max_bytes:
            return np.empty(nbytes, dtype=np.uint8)
        free = [i for i in range(len(self.buffers)) if sys.getrefcount(self.buffers[i]) == 2]  # list + argument
        fits = [i for i in free if self.buffers[i].size >= nbytes]
        if fits:
            return self.buffers[min(fits, key=lambda i: self.buffers[i].size)][:nbytes]
        buffer = np.empty(nbytes, dtype=np.uint8)
        if len(self.buffers) < self.max_buffers:
            self.buffers.append(buffer)
        elif free:  # every free buffer is too small: replace the smallest
            self.buffers[min(free, key=lambda i: self.buffers[i].size)] = buffer
        return buffer[:nbytes]


def _pack(meta_bytes: np.ndarray, arrays: list[np.ndarray], chunk_bytes: int,
          take: Callable[[int], np.ndarray] | None = None) -> np.ndarray | None:
    """The whole bundle as one uint8 buffer (from `take(nbytes)` if given), or None if it would exceed one chunk."""
    header = encode_header(chunk_bytes, meta_bytes.size, arrays)
    header[0] = MAGIC_PACKED
    offsets, total = _packed_layout(header.nbytes, meta_bytes.size, [a.nbytes for a in arrays])
    if total > chunk_bytes:
        return None
    buffer = np.zeros(total, dtype=np.uint8) if take is None else take(total)
    end = header.nbytes + meta_bytes.size
    buffer[end:offsets[0] if offsets else total] = 0  # padding: never send stale bytes
    for offset, array in zip(offsets, arrays):
        buffer[offset + array.nbytes:_aligned(offset + array.nbytes)] = 0
    buffer[:header.nbytes] = _byte_view(header)
    buffer[header.nbytes:header.nbytes + meta_bytes.size] = meta_bytes
    for offset, array in zip(offsets, arrays):
        buffer[offset:offset + array.nbytes] = _byte_view(array)
    return buffer


def _pointer(index: int, generation: int, name: str, nbytes: int) -> np.ndarray:
    """The small message that points a same-node receiver at a packed bundle in slot `index`."""
    encoded = name.encode("utf-8")
    words = np.zeros(_POINTER_WORDS + -(-len(encoded) // 8), dtype=np.int64)
    words[:_POINTER_WORDS] = (MAGIC_SHARED, VERSION, index, generation, nbytes, len(encoded))
    out = words.view(np.uint8)
    out[8 * _POINTER_WORDS:8 * _POINTER_WORDS + len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    return out


def _decode_pointer(raw: np.ndarray, source: int) -> tuple[int, int, str, int]:
    """(slot, generation, file name, bundle bytes) from a pointer message, checked."""
    if raw.size < 8 * _POINTER_WORDS or raw.size % 8:
        raise TransportError(f"malformed shared-memory pointer from rank {source}: {raw.size} bytes")
    _, version, index, generation, nbytes, name_len = raw[:8 * _POINTER_WORDS].view(np.int64).tolist()
    if version != VERSION:
        raise TransportError(f"bundle protocol version {version} received, this side speaks {VERSION}")
    if not 0 <= name_len <= raw.size - 8 * _POINTER_WORDS or nbytes < 0 or index < 0:
        raise TransportError(f"malformed shared-memory pointer from rank {source}")
    name = raw[8 * _POINTER_WORDS:8 * _POINTER_WORDS + name_len].tobytes().decode("utf-8")
    if "/" in name or not name.startswith("sparsenet-"):
        raise TransportError(f"shared-memory pointer from rank {source} names {name!r}, not a sparsenet segment")
    return index, generation, name, nbytes


class PendingSend:
    """A send under way; keeps its buffer alive until `wait` completes it."""

    def __init__(self, request, buffer, max_sleep: float, timeout: float | None = None,
                 silent: Callable[[], str] | None = None):
        self.request, self.buffer, self.max_sleep = request, buffer, max_sleep
        self.timeout, self.silent = timeout, silent

    def wait(self) -> None:
        if self.request is not None:
            _wait_all([self.request], self.max_sleep, TRANSFER_SPIN, self.timeout, self.silent)
            self.request = self.buffer = None


class Transport:
    """Sends and receives bundles on one communicator, counting bytes both ways."""

    def __init__(self, comm=None, chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_sleep: float = DEFAULT_MAX_SLEEP):
        """comm: an mpi4py communicator (None = COMM_WORLD); chunk_bytes: bytes per MPI message;
        max_sleep: longest sleep between polls, in seconds."""
        self.chunk_bytes = validate_chunk_bytes(chunk_bytes)
        if not max_sleep > 0:
            raise ValueError(f"max_sleep must be > 0 seconds, got {max_sleep}")
        self.max_sleep = float(max_sleep)
        mpi = _mpi()
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = mpi.Get_processor_name()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.pool = BufferPool()
        self.mailboxes = None  # same-node shared-memory slots, after enable_shared_memory()
        self.bells = None  # same-node wake-ups (shm.Doorbells), after enable_shared_memory()
        self._channel_paths: list[str] = []  # channel files this rank created (open_channel), for close()
        # Decoded packed-message layouts by header bytes: a run sends the same shapes over and over.
        self._layouts: dict[bytes, tuple] = {}
        # Seconds a wait for a bundle yields before it sleeps: 0 for a rank that waits long and
        # must stay off the CPU (the server), about a round trip for one expecting a quick reply.
        self.probe_spin = 0.0
        self.wait_seconds = 0.0  # wall time spent waiting for bundles to arrive
        self.wait_cpu_seconds = 0.0  # CPU time this process used meanwhile
        # Seconds any wait (receive, transfer, barrier) may hear nothing from its peer before it
        # raises SilentRankError naming that rank (None: wait forever). hosts: every rank's host
        # name for that message, once learn_hosts() has run.
        self.silence_timeout: float | None = None
        self.hosts: list[str] | None = None

    @contextlib.contextmanager
    def patience(self, extra: float):
        """Waits inside may stay silent `extra` seconds longer than silence_timeout (a peer that
        computes a whole epoch without a message)."""
        saved = self.silence_timeout
        if saved is not None:
            self.silence_timeout = saved + max(0.0, extra)
        try:
            yield
        finally:
            self.silence_timeout = saved

    def learn_hosts(self) -> None:
        """Every rank's host name, for messages about silent ranks. Collective."""
        self.hosts = self._allgather_names(self.host[:NAME_BYTES].encode("ascii", "replace").decode("ascii"))

    def describe(self, rank: int) -> str:
        host = self.hosts[rank] if self.hosts and 0 <= rank < len(self.hosts) else None
        return f"rank {rank} on {host}" if host else f"rank {rank}"

    def _silence(self, peers: Sequence[int] | None, waited: float, what: str) -> Callable[[], str]:
        """The message of a wait for `peers` (None: every other rank) that heard nothing for `waited` s."""
        def message() -> str:
            ranks = [r for r in range(self.size) if r != self.rank] if peers is None else list(peers)
            who = ", ".join(self.describe(r) for r in ranks) if len(ranks) < 8 else f"{len(ranks)} ranks"
            return (f"{self.describe(self.rank)} heard nothing from {who} for {waited:.3g} s while {what} "
                    f"(parallel.timeout_s): stopped, hung in I/O or its node lost; ending the job")
        return message

    def node_size(self) -> int:
        """Ranks sharing this rank's node (its memory). Collective: every rank must call it."""
        local = self.comm.Split_type(_mpi().COMM_TYPE_SHARED)
        size = local.Get_size()
        local.Free()
        return size

    def enable_shared_memory(self, max_bytes: int = DEFAULT_SHARED_MAX_BYTES) -> int:
        """Send packed bundles of up to `max_bytes` to ranks on this node through shared memory (shm.py).

        Collective: every rank must call it. Returns the number of other ranks reachable that way.
        """
        from .shm import Doorbells, Mailboxes

        if self.mailboxes is not None:
            raise RuntimeError("enable_shared_memory() was already called on this Transport")
        mpi = _mpi()
        local = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        ranks = mpi.Group.Translate_ranks(local.Get_group(), list(range(local.Get_size())), self.comm.Get_group())
        local.Free()
        self.mailboxes = Mailboxes(self.rank, set(ranks), self.comm.Dup(), max_bytes)
        atexit.register(self.close)
        bell = None
        if not self.mailboxes.disabled:
            try:
                bell = Doorbells(self.mailboxes.prefix)
            except OSError:
                pass
        names = self._allgather_names(bell.name if bell else "")  # also: every FIFO exists before peers open it
        connected = bell is not None
        if bell is not None:
            try:
                bell.connect({r: names[r] for r in self.mailboxes.local if names[r]})
            except OSError:
                connected = False
        # Doorbells for all or none: a rank that cannot ring would leave its peers asleep.
        everyone = np.zeros(1, dtype=np.int64)
        self.comm.Allreduce(np.array([int(connected)], dtype=np.int64), everyone, op=mpi.MIN)
        if everyone[0]:
            self.bells = bell
        self.barrier()  # every peer has opened our FIFO: its name may go
        if bell is not None:
            bell.unlink()
            if self.bells is None:
                bell.close()
        return 0 if self.mailboxes.disabled else len(self.mailboxes.local)

    def _allgather_names(self, name: str) -> list[str]:
        """Every rank's `name` (ASCII, at most NAME_BYTES), in rank order; collective."""
        mine = np.zeros(NAME_BYTES, dtype=np.uint8)
        encoded = name.encode("ascii")
        mine[:len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
        every = np.empty((self.size, NAME_BYTES), dtype=np.uint8)
        self.comm.Allgather(mine, every)
        return [row.tobytes().rstrip(b"\0").decode("ascii") for row in every]

    def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Remove the shared-memory segments and doorbell this rank created (received bundles stay
        readable); segments not yet mapped by their receiver get `grace` seconds first."""
        deadline = time.monotonic() + grace
        if self.mailboxes is not None:
            self.mailboxes.close(grace)
        unlink_once_mapped(self._channel_paths, max(0.0, deadline - time.monotonic()))
        self._channel_paths = []
        if self.bells is not None:
            self.bells.close()
            self.bells = None

    def _packed_message(self, dest: int, meta_bytes: np.ndarray, prepared: list[np.ndarray]
                        ) -> tuple[np.ndarray, int] | None:
        """(message, bundle bytes) for a bundle that fits one chunk, else None.

        The message is the packed bundle itself, or a pointer to it in a shared-memory slot.
        """
        slot = None

        def take(nbytes: int) -> np.ndarray:
            nonlocal slot
            slot = self.mailboxes.reserve(dest, nbytes) if self.mailboxes is not None else None
            return slot[1].array[:nbytes] if slot is not None else self.pool.take(nbytes)

        packed = _pack(meta_bytes, prepared, self.chunk_bytes, take)
        if packed is None:
            return None
        if slot is None:
            return packed, packed.size
        index, box = slot
        return _pointer(index, box.generation, box.name, packed.size), packed.size

    def _release_received(self) -> None:
        if self.mailboxes is not None:
            self.mailboxes.release_unreferenced()

    def send_bundle(self, dest: int, tag: int, meta: Mapping[str, Any], arrays: Sequence[Any] = ()) -> int:
        """Send one bundle to `dest`; return its size in bytes (header + meta + payload).

        Returns once every piece is delivered to MPI; large pieces need the receiver's recv.
        """
        self._release_received()
        prepared = [_prepare(a) for a in arrays]
        meta_bytes = np.frombuffer(encode_meta(meta), dtype=np.uint8)
        packed = self._packed_message(dest, meta_bytes, prepared)
        if packed is not None:
            pieces, nbytes = [packed[0]], packed[1]
        else:
            header = encode_header(self.chunk_bytes, meta_bytes.size, prepared)
            pieces = [_byte_view(header)]
            pieces += _chunks(meta_bytes, self.chunk_bytes)
            for array in prepared:
                pieces += _chunks(_byte_view(array), self.chunk_bytes)
            nbytes = header.nbytes + meta_bytes.size + sum(a.nbytes for a in prepared)
        self._transfer(pieces, lambda p: self.comm.Isend([p, _mpi().BYTE], dest, tag), ring=dest, peer=dest)
        self.bytes_sent += nbytes
        return nbytes

    def isend_bundle(self, dest: int, tag: int, meta: Mapping[str, Any], arrays: Sequence[Any] = ()) -> "PendingSend":
        """Start sending a bundle and return at once; the arrays may change right after the call.

        The bundle is packed into a shared-memory slot (same node) or a private buffer that MPICH
        delivers while this rank computes; one too large for a single chunk is sent blocking instead.
        """
        self._release_received()
        prepared = [_prepare(a) for a in arrays]
        packed = self._packed_message(dest, np.frombuffer(encode_meta(meta), dtype=np.uint8), prepared)
        if packed is None:
            self.send_bundle(dest, tag, meta, prepared)
            return PendingSend(None, None, self.max_sleep)
        message, nbytes = packed
        self.bytes_sent += nbytes
        if message.size < nbytes:  # a pointer to a shared-memory slot: a few bytes, delivered at once
            self.comm.Send([message, _mpi().BYTE], dest, tag)
            self._ring(dest)
            return PendingSend(None, None, self.max_sleep)
        request = self.comm.Isend([message, _mpi().BYTE], dest, tag)
        self._ring(dest)
        return PendingSend(request, message, self.max_sleep, self.silence_timeout,
                           self._silence([dest], self.silence_timeout or 0, f"sending to rank {dest}"))

    def open_channel(self, peer: int, sizes: Sequence[int]):
        """A new channel.Channel to same-node `peer` sized for float32 arrays of `sizes`, or None (no
        shared memory or doorbell to `peer`, buffers over the shared-memory limit, /dev/shm full).
        The peer maps it with attach_channel(channel.path)."""
        from .channel import Channel, channel_path, layout

        if (self.bells is None or peer not in self.bells.peers or self.mailboxes.disabled
                or layout(sizes)[1] > self.mailboxes.max_bytes):
            return None
        path = channel_path(self.mailboxes.prefix, peer, self.mailboxes.directory)
        try:
            channel = Channel.create(path, sizes)
        except OSError:
            return None
        self._channel_paths.append(path)
        return channel

    def attach_channel(self, path: str):
        """Map the channel a same-node peer opened for this rank (open_channel)."""
        from .channel import Channel

        try:
            return Channel.attach(path)
        except (OSError, ValueError) as err:
            raise TransportError(f"rank {self.rank} cannot map the shared-memory channel {path} ({err}); if the "
                                 "ranks do not share /dev/shm, set parallel.shared_memory=false") from None

    def recv_bundle(self, source: int | None = None, tag: int | None = None,
             timeout: float | None = None) -> Bundle:
        """Receive one bundle (source/tag None = any); TimeoutError if none starts within `timeout` s."""
        return self._receive(*self._probe_message(source, tag, timeout))

    def recv_unless(self, ready: Callable[[], bool], source: int | None = None, tag: int | None = None,
                    timeout: float | None = None) -> Bundle | None:
        """Receive one bundle as recv_bundle does, unless `ready()` turns true first (then None).

        `ready` checks a same-node channel (channel.py) whose sender rings this rank's doorbell, so
        one sleep waits for either.
        """
        message, status = self._probe_message(source, tag, timeout, ready)
        return None if message is None else self._receive(message, status)

    def ring(self, dest: int) -> None:
        """Wake `dest` if it sleeps on its doorbell (after posting to a channel it reads)."""
        self._ring(dest)

    def _receive(self, message, status) -> Bundle:
        """Receive the bundle whose first message `message` was matched with `status`."""
        mpi = _mpi()
        raw = self.pool.take(status.Get_count(mpi.BYTE))
        message.Recv([raw, mpi.BYTE])
        source, tag = status.Get_source(), status.Get_tag()
        magic = int(raw[:8].view(np.int64)[0]) if raw.size >= 8 else None
        if magic == MAGIC_SHARED:
            if self.mailboxes is None:
                raise TransportError(f"rank {source} sent a shared-memory pointer; this rank has no mailboxes")
            index, generation, name, nbytes = _decode_pointer(raw, source)
            try:
                slot = self.mailboxes.open(source, index, generation, name, nbytes)
            except (OSError, ValueError) as err:
                raise TransportError(f"rank {self.rank} cannot read the shared-memory bundle rank {source} sent "
                                     f"({err}); do the two ranks see the same /dev/shm? Set "
                                     "parallel.shared_memory=false to send everything through MPI") from None
            return self._unpack(slot, source, tag)
        if magic == MAGIC_PACKED:
            return self._unpack(raw, source, tag)
        chunk_bytes, meta_nbytes, specs = decode_header(raw)
        meta_raw = np.empty(meta_nbytes, dtype=np.uint8)
        arrays = [np.empty(shape, dtype=dtype) for dtype, shape in specs]
        pieces = list(_chunks(meta_raw, chunk_bytes))
        for array in arrays:
            pieces += _chunks(_byte_view(array), chunk_bytes)
        self._transfer(pieces, lambda p: self.comm.Irecv([p, mpi.BYTE], source, tag), peer=source)
        meta = self._decode_meta(meta_raw, source, tag)
        nbytes = raw.size + meta_nbytes + sum(a.nbytes for a in arrays)
        self.bytes_received += nbytes
        return Bundle(source=source, tag=tag, meta=meta, arrays=arrays, nbytes=nbytes)

    def _unpack(self, raw: np.ndarray, source: int, tag: int) -> Bundle:
        """A bundle from one packed message; its arrays are aligned views of `raw`."""
        n_arrays = int(raw[24:32].view(np.int64)[0]) if raw.size >= 8 * _HEAD else -1
        header_nbytes = 8 * (_HEAD + _PER_ARRAY * n_arrays)
        if n_arrays < 0 or header_nbytes > raw.size:
            raise TransportError(f"malformed packed bundle: {raw.size} bytes cannot hold its header")
        key = raw[:header_nbytes].tobytes()
        layout = self._layouts.get(key)
        if layout is None:  # a header not seen lately: validate and decode it
            _, meta_nbytes, specs = decode_header(raw[:header_nbytes])
            sizes = [dt.itemsize * math.prod(sh) for dt, sh in specs]
            layout = (meta_nbytes, specs, sizes, *_packed_layout(header_nbytes, meta_nbytes, sizes))
            if len(self._layouts) >= LAYOUT_CACHE:
                del self._layouts[next(iter(self._layouts))]
            self._layouts[key] = layout
        meta_nbytes, specs, sizes, offsets, end = layout
        if end != raw.size:
            raise TransportError(f"malformed packed bundle: {raw.size} bytes, its header describes {end}")
        meta = self._decode_meta(raw[header_nbytes:header_nbytes + meta_nbytes], source, tag)
        arrays = [raw[off:off + size].view(dt).reshape(sh) for off, size, (dt, sh) in zip(offsets, sizes, specs)]
        self.bytes_received += raw.size
        return Bundle(source=source, tag=tag, meta=meta, arrays=arrays, nbytes=raw.size)

    def poll(self, source: int | None = None, tag: int | None = None) -> tuple[int, int] | None:
        """(source, tag) of a bundle waiting to be received, or None; never blocks."""
        mpi = _mpi()
        status = mpi.Status()
        source = mpi.ANY_SOURCE if source is None else source
        tag = mpi.ANY_TAG if tag is None else tag
        for _ in range(PROBES_PER_WAKE):  # the first probe may only make MPICH notice the message
            if self.comm.Iprobe(source, tag, status):
                return status.Get_source(), status.Get_tag()
        return None

    def barrier(self, timeout: float | None = -1.0) -> None:
        """Wait for every rank of the communicator, sleeping between tests; SilentRankError after
        `timeout` s (default: silence_timeout; None: wait forever)."""
        timeout = self.silence_timeout if timeout == -1.0 else timeout
        _wait_all([self.comm.Ibarrier()], self.max_sleep, timeout=timeout,
                  silent=self._silence(None, timeout or 0, "waiting for every rank (a barrier)"))

    def abort(self, code: int = 1) -> None:
        """Kill every process of the communicator with exit code `code` (MPI_Abort)."""
        self.comm.Abort(code)

    def _probe_message(self, source: int | None, tag: int | None, timeout: float | None,
                       ready: Callable[[], bool] | None = None):
        """Matched-probe the next header (source/tag None = any) with backoff sleeps; (message, status),
        TimeoutError, or (None, None) as soon as `ready()` is true."""
        mpi = _mpi()
        source = mpi.ANY_SOURCE if source is None else source
        tag = mpi.ANY_TAG if tag is None else tag
        status = mpi.Status()
        self._release_received()  # bundles the caller has dropped: their senders may reuse the slots
        bells = self.bells
        # Fast path for a message already here (a pipelined reply): no wait to set up or account.
        # Drain first, so its ring cannot make the next wait poll; a ring drained here whose message
        # MPI does not show yet counts as a ring below (polled for RING_GRACE, not slept through).
        rang = bells is not None and bells.drain()
        if ready is not None and ready():
            return None, None
        message = self.comm.Improbe(source, tag, status)
        if message is not None:
            return message, status
        silent = None  # the message if the transport's silence timeout, not the caller's, ends this wait
        if timeout is None and self.silence_timeout is not None:
            timeout = self.silence_timeout
            silent = self._silence(None if source == mpi.ANY_SOURCE else [source], timeout,
                                   f"waiting for a message (tag {tag})" if tag != mpi.ANY_TAG else "waiting for a message")
        deadline = None if timeout is None else time.monotonic() + timeout
        # Every possible sender rings our doorbell: sleep until it does (BELL_TIMEOUT is a safety net).
        rung = bells is not None and (len(bells.peers) == self.size - 1 if source == mpi.ANY_SOURCE
                                      else source in bells.peers)
        backoff = _Backoff(self.max_sleep, 0.0 if rung else self.probe_spin)
        wall, cpu = time.perf_counter(), time.process_time()
        last_ring = wall if rang else -math.inf
        if rang:
            backoff = _Backoff(self.max_sleep)
        while True:
            # Drain before probing, so a ring after the probe wakes the select below.
            if bells is not None and bells.drain():
                last_ring = time.perf_counter()
                backoff = _Backoff(self.max_sleep)  # poll quickly for the message that rang
            if ready is not None and ready():
                self.wait_seconds += time.perf_counter() - wall
                self.wait_cpu_seconds += time.process_time() - cpu
                return None, None
            for _ in range(PROBES_PER_WAKE):
                message = self.comm.Improbe(source, tag, status)
                if message is not None:
                    break
            if message is not None:
                self.wait_seconds += time.perf_counter() - wall
                self.wait_cpu_seconds += time.process_time() - cpu
                return message, status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if silent is not None:
                    raise SilentRankError(silent())
                raise TimeoutError(f"rank {self.rank}: no bundle from source {source} with tag {tag} "
                                   f"within {timeout} s")
            if rung and time.perf_counter() - last_ring > RING_GRACE:
                bells.wait(BELL_TIMEOUT if remaining is None else min(BELL_TIMEOUT, remaining))
            else:  # no doorbell, or a ring whose message MPI has not shown yet: it is on its way
                backoff.sleep(remaining)

    def _transfer(self, pieces: list[np.ndarray], start, ring: int | None = None, peer: int | None = None) -> None:
        """Run `start(piece)` (an Isend/Irecv) over pieces in order, WINDOW at a time, and complete them.

        Large messages move only while both sides poll, so a transfer under way yields rather
        than sleeps for its first TRANSFER_SPIN seconds. `ring`: the rank to wake once the first
        pieces are posted (a sender's destination).
        """
        for first in range(0, len(pieces), WINDOW):
            requests = [start(p) for p in pieces[first:first + WINDOW]]
            if first == 0 and ring is not None:
                self._ring(ring)
            _wait_all(requests, self.max_sleep, TRANSFER_SPIN, self.silence_timeout,
                      self._silence(None if peer is None else [peer], self.silence_timeout or 0,
                                    "a transfer was under way"))

    def _ring(self, dest: int) -> None:
        if self.bells is not None:
            self.bells.ring(dest)

    @staticmethod
    def _decode_meta(raw: np.ndarray, source: int, tag: int) -> dict:
        """The metadata dict from its UTF-8 JSON bytes."""
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TransportError(f"bundle from rank {source} tag {tag}: metadata is not JSON: {err}") from None
        if not isinstance(meta, dict):
            raise TransportError(f"bundle from rank {source} tag {tag}: metadata is {type(meta).__name__}, "
                                 "not a dict")
        return meta
