"""Point-to-point "bundles" (wire.py: a JSON metadata dict plus typed numpy arrays) over MPI, and
same-node MPI-3 shared windows.

The only module that imports mpi4py, when the first Transport is made, so
importing it never starts MPI. Arrays travel as raw bytes (uppercase Isend/Irecv), never pickled,
in chunks of at most `chunk_bytes` (MPI counts are C ints), so bundles and arrays over 2 GiB work;
a bundle that fits one chunk is one message (MPI keeps one source's messages of one tag in order).
Same node: enable_shared_memory() makes the node communicator (Comm.Split_type); shared_window()
allocates memory every rank of the node maps (Win.Allocate_shared, Win.Shared_query): MPI owns it,
so nothing of ours outlives the job.
Waiting never spins: MPICH's blocking calls busy-poll and ranks may share cores, so probes and tests
alternate with sleeps backing off from 20 µs to `max_sleep` (see _Backoff for the figures).
Not thread-safe: one Transport per communicator and thread.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SparsenetError
from .wire import DEFAULT_CHUNK_BYTES, Bundle, chunks, decode, encode, prepare, validate_chunk_bytes

MIN_SLEEP = 20e-6
MAX_SLEEP = 500e-6  # longest sleep between polls: bounds the latency a wait adds
IDLE_AFTER = 0.02  # a wait this long is idle: its sleeps may grow to IDLE_SLEEP
IDLE_SLEEP = 5e-3
ANTICIPATE = 0.8  # the server's Transport.anticipate (see _Backoff for the figures)
ANTICIPATE_CAP = 2e-3  # one long wait (start-up, a SET step) must not make the next ones oversleep
PROBES_PER_WAKE = 3  # MPICH may need a second progress call to see a message that has arrived
TRANSFER_SPIN = 2e-3  # seconds a transfer under way yields instead of sleeping
WINDOW = 64  # pieces in flight per bundle: bounds request count when chunks are tiny
SHARED_MAX_BYTES = 256 << 20  # largest model (float32 weights and biases) phase 1 moves through a shared window

NAME_BYTES = 128  # room for a host name in learn_hosts

_MPI = None


MPI_SHM_PREFIX = "/dev/shm/mpich_shm_"  # MPICH's node-wide shared memory, removed only by a clean exit


def remove_mpi_shm_files(maps: str = "/proc/self/maps") -> list[str]:
    """Unlink the files of MPI_SHM_PREFIX that this process maps and owns (Linux; elsewhere none);
    the job is ending: every rank keeps its mapping, nobody opens them again. Returns the paths removed."""
    try:
        with open(maps) as fh:
            fields = [line.split(None, 5) for line in fh]
    except OSError:
        return []
    paths = {f[5].strip() for f in fields if len(f) == 6}  # anonymous mappings have no path
    removed = []
    for path in sorted(p for p in paths if p.startswith(MPI_SHM_PREFIX)):
        try:
            if os.stat(path).st_uid == os.geteuid():
                os.unlink(path)
                removed.append(path)
        except OSError:  # gone already (another rank of the node), or not ours to remove
            pass
    return removed


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


class SilentRankError(SparsenetError, TimeoutError):
    """A wait heard nothing from a rank for the transport's `silence_timeout` (parallel.timeout_s)."""


class _Backoff:
    """Polling pace: yield the core for `spin` seconds, sleep `first` seconds once, then sleeps doubling
    from MIN_SLEEP to max_sleep (IDLE_SLEEP once the wait is longer than IDLE_AFTER: idle, not a hand-off).

    Why not MPI's own waiting: a rank blocked in MPI_Recv busy-polls (MPICH), and 3 ranks share 2
    cores. `scripts/bench_transport.py`, measured under load on the 2-core Xeon: waiting 2 s in
    MPI_Recv used 15-39 % of a core (3 runs), this polling 0.9-1.0 %. A hand-made wake-up (a pipe
    per rank that peers wrote to after each post, select() on it) saved CPU in waits (0.3-0.4 %) but
    no time: channel round trips 1,023/s with it, 1,113/s polled; so there is none.
    Each sleep costs ~20 µs of CPU on the 2-vCPU VM (Xeon-512-B), however short, so the server's waits
    begin with one long sleep (`first`, Transport.anticipate): FashionMNIST phase 1, 1 server + 2
    workers, quiet, 2 runs each, server CPU while waiting WASAP 11.8-11.9 % -> 6.8-7.0 % (epoch
    0.66-0.68 -> 0.61-0.63 s), WASSP 10.1-10.8 % -> 7.5-7.8 % (0.87-0.90 -> 0.83-0.86 s).
    """

    def __init__(self, max_sleep: float, spin: float = 0.0, first: float = 0.0):
        self.max_sleep, self.delay, self.first = max_sleep, min(MIN_SLEEP, max_sleep), first
        self.start = time.perf_counter()
        self.spin_until = self.start + spin

    def sleep(self, limit: float | None = None) -> None:
        now = time.perf_counter()
        if now < self.spin_until:
            os.sched_yield()
            return
        if self.first:
            delay, self.first = self.first, 0.0
        else:
            delay = self.delay
            cap = max(self.max_sleep, IDLE_SLEEP) if now - self.start > IDLE_AFTER else self.max_sleep
            self.delay = min(2 * self.delay, cap)
        time.sleep(delay if limit is None else max(0.0, min(delay, limit)))


def next_typical_wait(typical: float, waited: float) -> float:
    """The typical wait (s) after one of `waited` s: a moving average of waits counted up to ANTICIPATE_CAP."""
    return typical + 0.2 * (min(waited, ANTICIPATE_CAP) - typical)


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


class PendingSend:
    """A send of `nbytes` under way; keeps its buffer alive until `wait` completes it."""

    def __init__(self, request, buffer, nbytes: int, max_sleep: float, timeout: float | None = None,
                 silent: Callable[[], str] | None = None):
        self.request, self.buffer, self.nbytes, self.max_sleep = request, buffer, nbytes, max_sleep
        self.timeout, self.silent = timeout, silent

    def wait(self) -> None:
        if self.request is not None:
            _wait_all([self.request], self.max_sleep, TRANSFER_SPIN, self.timeout, self.silent)
            self.request = self.buffer = None


class Transport:
    """Sends and receives bundles on one communicator, counting bytes both ways."""

    def __init__(self, comm=None, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        """comm: an mpi4py communicator (None = COMM_WORLD); chunk_bytes: bytes per MPI message."""
        self.chunk_bytes = validate_chunk_bytes(chunk_bytes)
        self.max_sleep = MAX_SLEEP
        mpi = _mpi()
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.host = mpi.Get_processor_name()
        self.bytes_sent = self.bytes_received = 0
        self.node = None  # this node's communicator, after enable_shared_memory()
        self.node_ranks: list[int] = []  # rank in comm of every node rank, in node order
        self.windows: list = []  # MPI.Win of every shared_window(); synced by sync()
        self.shared_max_bytes = SHARED_MAX_BYTES
        # Seconds a wait for a bundle yields before it sleeps: 0 for a rank that waits long and
        # must stay off the CPU (the server), about a round trip for one expecting a quick reply.
        self.probe_spin = 0.0
        # The server's waits first sleep this share of the recent typical wait for the same source and
        # tag (each wait counted up to ANTICIPATE_CAP s): fewer wake-ups, each ~20 µs of CPU on a VM.
        self.anticipate = 0.0
        self._typical_wait: dict[tuple[int, int], float] = {}
        self.wait_seconds = self.wait_cpu_seconds = 0.0  # wall and CPU time spent waiting for bundles
        # Seconds any wait may hear nothing from its peer before SilentRankError (None: forever);
        # hosts: every rank's host name for that message, once learn_hosts() has run.
        self.silence_timeout: float | None = None
        self.hosts: list[str] | None = None

    @contextlib.contextmanager
    def patience(self, extra: float):
        """Waits inside may stay silent `extra` seconds longer than silence_timeout."""
        saved = self.silence_timeout
        if saved is not None:
            self.silence_timeout = saved + max(0.0, extra)
        try:
            yield
        finally:
            self.silence_timeout = saved

    def learn_hosts(self) -> None:
        """Every rank's host name, for messages about silent ranks. Collective."""
        mine = np.zeros(NAME_BYTES, dtype=np.uint8)
        encoded = self.host.encode("ascii", "replace")[:NAME_BYTES]
        mine[:len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
        every = np.empty((self.size, NAME_BYTES), dtype=np.uint8)
        self.comm.Allgather(mine, every)
        self.hosts = [row.tobytes().rstrip(b"\0").decode("ascii") for row in every]

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

    # ------------------------------------------------------------------ same node

    def enable_shared_memory(self) -> int:
        """Make this node's communicator, for shared_window(). Collective. Returns the number of
        other ranks on this node (node_ranks: their ranks in comm, this one's too)."""
        mpi = _mpi()
        self.node = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.node_ranks = mpi.Group.Translate_ranks(self.node.Get_group(), list(range(self.node.Get_size())),
                                                    self.comm.Get_group())
        return len(self.node_ranks) - 1

    def shared_window(self, nbytes: int) -> np.ndarray:
        """uint8 view of a new MPI shared window of `nbytes` bytes held by rank 0 (the others pass 0)
        that every rank of this node maps. Collective over the node: the first to come wait polled."""
        mpi = _mpi()
        self.barrier(node=True)  # not in MPI's allocation, which busy-polls
        win = mpi.Win.Allocate_shared(nbytes if self.rank == 0 else 0, 1, comm=self.node)
        win.Lock_all(mpi.MODE_NOCHECK)  # one passive epoch for the run, so that Win.Sync may order accesses
        self.windows.append(win)
        memory, _ = win.Shared_query(self.node_ranks.index(0))
        return np.frombuffer(memory, dtype=np.uint8)

    def sync(self) -> None:
        """Memory barrier between this rank's stores and loads in shared windows and its peers' (Win.Sync)."""
        for win in self.windows:
            win.Sync()

    # ------------------------------------------------------------------ bundles

    def send_bundle(self, dest: int, tag: int, meta: Mapping[str, Any], arrays: Sequence[Any] = ()) -> int:
        """Send one bundle to `dest`; return its size in bytes once MPI holds every piece."""
        pending = self.isend_bundle(dest, tag, meta, arrays)
        pending.wait()
        return pending.nbytes

    def isend_bundle(self, dest: int, tag: int, meta: Mapping[str, Any], arrays: Sequence[Any] = ()) -> PendingSend:
        """Start sending a bundle; the arrays may change right after the call (one larger than a
        chunk is sent before it returns)."""
        prepared = [prepare(a) for a in arrays]
        header, inline = encode(meta, prepared, self.chunk_bytes)
        nbytes = header.size + (0 if inline else sum(a.nbytes for a in prepared))
        self.bytes_sent += nbytes
        silent = self._silence([dest], self.silence_timeout or 0, f"sending to rank {dest}")
        if inline:
            request = self.comm.Isend([header, _mpi().BYTE], dest, tag)
            return PendingSend(request, header, nbytes, self.max_sleep, self.silence_timeout, silent)
        pieces = [header, *chunks(prepared, self.chunk_bytes)]
        self._transfer(pieces, lambda p: self.comm.Isend([p, _mpi().BYTE], dest, tag), dest)
        return PendingSend(None, None, nbytes, self.max_sleep)

    def recv_bundle(self, source: int | None = None, tag: int | None = None, timeout: float | None = None,
                    ready: Callable[[], bool] | None = None) -> Bundle | None:
        """Receive one bundle (source/tag None = any); TimeoutError if none starts within `timeout` s.
        None as soon as `ready()` (a channel post in a shared window) is true: one wait polls both."""
        message, status = self._probe_message(source, tag, timeout, ready)
        if message is None:
            return None
        mpi = _mpi()
        raw = np.empty(status.Get_count(mpi.BYTE), dtype=np.uint8)
        message.Recv([raw, mpi.BYTE])
        source, tag = status.Get_source(), status.Get_tag()
        bundle, chunk_bytes = decode(raw, source, tag)
        if chunk_bytes is not None:
            pieces = list(chunks(bundle.arrays, chunk_bytes))
            self._transfer(pieces, lambda p: self.comm.Irecv([p, mpi.BYTE], source, tag), source)
        self.bytes_received += bundle.nbytes
        return bundle

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

    def barrier(self, node: bool = False) -> None:
        """Wait for every rank (of this node if `node`), sleeping between tests; SilentRankError after
        silence_timeout s."""
        timeout, peers = self.silence_timeout, [r for r in self.node_ranks if r != self.rank] if node else None
        _wait_all([(self.node if node else self.comm).Ibarrier()], self.max_sleep, timeout=timeout,
                  silent=self._silence(peers, timeout or 0, "waiting for every rank (a barrier)"))

    def abort(self, code: int = 1) -> None:
        """Kill every process of the communicator with exit code `code` (MPI_Abort), first removing
        the MPI library's /dev/shm files this rank maps: MPI_Abort leaves them (MPICH: 3 MB per job)."""
        try:
            remove_mpi_shm_files()
        finally:  # whatever happens there, the job must end
            self.comm.Abort(code)

    def _probe_message(self, source: int | None, tag: int | None, timeout: float | None,
                       ready: Callable[[], bool] | None = None):
        """Matched-probe the next header (source/tag None = any) with backoff sleeps; (message, status),
        TimeoutError, or (None, None) as soon as `ready()` is true."""
        mpi = _mpi()
        source = mpi.ANY_SOURCE if source is None else source
        tag = mpi.ANY_TAG if tag is None else tag
        status = mpi.Status()
        # Fast path for what is here already (a pipelined reply): no wait to set up or account.
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
        typical = self._typical_wait.get((source, tag), 0.0)
        backoff = _Backoff(self.max_sleep, self.probe_spin, self.anticipate * typical)
        wall, cpu = time.perf_counter(), time.process_time()
        while True:
            found = ready is not None and ready()
            for _ in range(0 if found else PROBES_PER_WAKE):
                message = self.comm.Improbe(source, tag, status)
                if message is not None:
                    break
            if found or message is not None:
                waited = time.perf_counter() - wall
                self.wait_seconds += waited
                self.wait_cpu_seconds += time.process_time() - cpu
                self._typical_wait[source, tag] = next_typical_wait(typical, waited)
                return (None, None) if found else (message, status)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if silent is not None:
                    raise SilentRankError(silent())
                raise TimeoutError(f"rank {self.rank}: no bundle from source {source} with tag {tag} "
                                   f"within {timeout} s")
            backoff.sleep(remaining)

    def _transfer(self, pieces: list[np.ndarray], start, peer: int | None = None) -> None:
        """Run `start(piece)` (an Isend/Irecv) over pieces in order, WINDOW at a time, and complete them.
        Large messages move only while both sides poll, so a transfer yields rather than sleeps for
        its first TRANSFER_SPIN seconds."""
        for first in range(0, len(pieces), WINDOW):
            requests = [start(p) for p in pieces[first:first + WINDOW]]
            _wait_all(requests, self.max_sleep, TRANSFER_SPIN, self.silence_timeout,
                      self._silence(None if peer is None else [peer], self.silence_timeout or 0,
                                    "a transfer was under way"))
