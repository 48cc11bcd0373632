"""Checks sparsenet.parallel.transport under mpiexec; rank 0 prints "ALL OK" when every check passed.

    mpiexec -n 2 python tests/mpi/transport_roundtrip.py           # round trips, chunking, ANY_SOURCE, errors
    mpiexec -n 2 python tests/mpi/transport_roundtrip.py --idle    # CPU time while waiting 2 s in recv
    mpiexec -n 2 python tests/mpi/transport_roundtrip.py --big     # one bundle over 2 GiB, SHA-256 checked
    mpiexec -n 2 python tests/mpi/transport_roundtrip.py --shared  # plus a channel in an MPI shared window
    mpiexec -n 2 python tests/mpi/transport_roundtrip.py --idle --shared  # waiting for a channel post
Any failure prints a traceback and aborts every rank, so mpiexec exits non-zero instead of hanging.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import time
import traceback

import numpy as np

from sparsenet.parallel.channel import in_window, shape
from sparsenet.parallel.transport import Transport
from sparsenet.parallel.wire import DTYPES, Bundle, TransportError

TAG_ALL, TAG_ECHO, TAG_COUNT, TAG_TINY, TAG_BAD, TAG_IDLE, TAG_BIG = 1, 2, 3, 4, 5, 6, 7
TAG_CHANNEL = 10
CHANNEL_SIZES = [[300_000, 1000, 0, 17], [300_000, 1000, 0, 17], [5, 3], [7], [300_000, 1000, 0, 17],
                 [300_000, 1000, 0, 17], [300_000, 2], [7, 7, 7, 7]]
TAG_FANIN = 100  # + sender rank
BIG_NBYTES = 2**31 + 12345
IDLE_SECONDS = 2.0
IDLE_MAX_CPU_FRACTION = 0.10


def check(condition: bool, message: str) -> None:
    """Raise AssertionError(message) unless condition holds (asserts survive python -O)."""
    if not condition:
        raise AssertionError(message)


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Dtype, shape and every element equal."""
    check(got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}")
    check(got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}")
    check(got.flags.c_contiguous and got.flags.writeable, f"{what}: not a fresh C-contiguous array")
    check(np.array_equal(got, want), f"{what}: values differ")


def sample_arrays(seed: int) -> list[np.ndarray]:
    """Every supported dtype in 0-d..4-d and empty shapes, plus non-contiguous and byte-swapped views."""
    rng = np.random.default_rng(seed)
    arrays = []
    for i, dtype in enumerate(DTYPES):
        shape = [(), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)][i % 5]
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True))
        arrays.append(np.empty((0,) if i % 2 else (3, 0, 2), dtype=dtype))
    grid = rng.standard_normal((6, 8))
    arrays.append(grid[:, ::2])  # strided
    arrays.append(grid.T)  # Fortran order
    arrays.append(np.asfortranarray(rng.integers(0, 100, (4, 3, 2), dtype=np.int32)))
    arrays.append(rng.standard_normal(5).astype(">f8"))  # big-endian: sent as native float64
    return arrays


SAMPLE_META = {"epoch": 3, "lr": 0.125, "name": "wörker", "sizes": [1, 2, 3], "nested": [[1.5], ["a"]]}


def expect_bundle(got: Bundle, want_arrays: list[np.ndarray], want_meta: dict, source: int, tag: int) -> None:
    """A received bundle matches what was sent, array by array."""
    check((got.source, got.tag) == (source, tag), f"(source, tag) {(got.source, got.tag)} != {(source, tag)}")
    check(got.meta == want_meta, f"meta {got.meta} != {want_meta}")
    check(len(got.arrays) == len(want_arrays), f"{len(got.arrays)} arrays != {len(want_arrays)}")
    for i, (a, b) in enumerate(zip(got.arrays, want_arrays)):
        assert_same(a, np.array(b, dtype=b.dtype.newbyteorder("="), order="C"), f"tag {tag} array {i}")


def roundtrip_all_dtypes(t: Transport) -> None:
    """Rank 1 sends every dtype/shape to rank 0, which echoes it back; both check exactly."""
    arrays = sample_arrays(seed=11)
    if t.rank == 1:
        sent = t.send_bundle(0, TAG_ALL, SAMPLE_META, arrays)
        t.send_bundle(0, TAG_COUNT, {"sent": sent})
        echo = t.recv_bundle(source=0, tag=TAG_ECHO, timeout=30)
        expect_bundle(echo, arrays, SAMPLE_META, 0, TAG_ECHO)
    elif t.rank == 0:
        got = t.recv_bundle(source=1, tag=TAG_ALL, timeout=30)
        expect_bundle(got, arrays, SAMPLE_META, 1, TAG_ALL)
        count = t.recv_bundle(source=1, tag=TAG_COUNT, timeout=30)
        check(count.meta["sent"] == got.nbytes, f"send() said {count.meta['sent']} bytes, recv got {got.nbytes}")
        check(t.send_bundle(1, TAG_ECHO, got.meta, got.arrays) == got.nbytes, "echo size differs")


def tiny_chunks(t: Transport) -> int:
    """chunk_bytes=1024 on the sender only: hundreds of chunks, metadata chunked too; bytes sent."""
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(100_003), rng.integers(-9, 9, (37, 1025), dtype=np.int32),
              np.arange(1024, dtype=np.uint8), np.arange(3, dtype=np.int16)]
    meta = {"long": "x" * 5000, "values": list(range(600))}
    if t.rank == 1:
        small = Transport(t.comm, chunk_bytes=1024)
        return small.send_bundle(0, TAG_TINY, meta, arrays)
    if t.rank == 0:
        got = t.recv_bundle(source=1, tag=TAG_TINY, timeout=30)
        expect_bundle(got, arrays, meta, 1, TAG_TINY)
    return 0


def fan_in(t: Transport) -> None:
    """Every rank >= 1 sends to rank 0 with its own tag; rank 0 takes them by ANY_SOURCE/ANY_TAG."""
    if t.rank > 0:
        t.send_bundle(0, TAG_FANIN + t.rank, {"rank": t.rank}, [np.full((t.rank, 3), t.rank, dtype=np.int64)])
        return
    waiting = None
    deadline = time.monotonic() + 30
    while waiting is None and time.monotonic() < deadline:
        waiting = t.poll()
        time.sleep(0.001)
    check(waiting is not None and waiting[1] == TAG_FANIN + waiting[0], f"poll() gave {waiting}")
    seen = set()
    for _ in range(1, t.size):
        got = t.recv_bundle(timeout=30)
        check(got.tag == TAG_FANIN + got.source and got.meta == {"rank": got.source}, f"bad fan-in {got}")
        assert_same(got.arrays[0], np.full((got.source, 3), got.source, dtype=np.int64), "fan-in array")
        seen.add(got.source)
    check(seen == set(range(1, t.size)), f"fan-in from {sorted(seen)}")
    # (only fan-in tags: the other ranks may already have sent the next test's messages)
    left = [t.poll(tag=TAG_FANIN + r) for r in range(1, t.size)]
    check(left == [None] * (t.size - 1), f"a fan-in message is left over: {left}")


def errors(t: Transport) -> None:
    """Timeouts raise TimeoutError; a message that is not a bundle raises TransportError."""
    if t.rank == 1:
        t.comm.Send(np.arange(6, dtype=np.int64), dest=0, tag=TAG_BAD)
    elif t.rank == 0:
        start = time.monotonic()
        try:
            t.recv_bundle(source=1, tag=999, timeout=0.05)
            check(False, "recv did not time out")
        except TimeoutError:
            check(time.monotonic() - start < 5, "timeout took far too long")
        try:
            t.recv_bundle(source=1, tag=TAG_BAD, timeout=30)
            check(False, "malformed header accepted")
        except TransportError as err:
            check("magic" in str(err), f"unexpected error text: {err}")
    # invalid input is refused before anything is sent
    for meta, arrays, error in (({}, [np.zeros(2, object)], TypeError),
                                ({}, [np.zeros(2, np.complex64)], TypeError),
                                ({"s": {1, 2}}, [], TypeError),
                                ({}, [np.zeros((1,) * 5)], ValueError)):
        try:
            t.send_bundle(0, 0, meta, arrays)
            check(False, f"send accepted meta {meta} / {arrays[0].dtype if arrays else ''}")
        except error:
            pass


def counters(t: Transport, other_sent: int) -> None:
    """Bytes counted on every rank add up: total sent (plus other_sent) == total received."""
    sent = t.comm.allreduce(t.bytes_sent + other_sent)
    received = t.comm.allreduce(t.bytes_received)
    check(sent == received > 0, f"bytes sent {sent} != received {received}")


def run_basic(t: Transport) -> None:
    """All functional checks."""
    roundtrip_all_dtypes(t)
    tiny_sent = tiny_chunks(t)
    fan_in(t)
    errors(t)
    t.barrier()
    counters(t, tiny_sent)
    print(f"rank {t.rank}/{t.size} on {t.host}: OK", flush=True)


def enable_shared(t: Transport) -> None:
    local = t.enable_shared_memory()
    check(local == t.size - 1, f"{local} of {t.size - 1} other ranks reachable through shared memory")
    check(sorted(t.node_ranks) == list(range(t.size)), f"node ranks {t.node_ranks}")


def channel_values(step: int, sizes: list[int], answer: bool) -> list[np.ndarray]:
    """What rank 1 (answer False) or rank 0 (answer True) puts in the arrays of channel exchange `step`."""
    return [np.arange(n, dtype=np.float32) * (-1.0 if answer else 1.0) + 1000 * step + i for i, n in enumerate(sizes)]


def channel_round_trips(t: Transport) -> None:
    """Every rank joins rank 0's shared window; rank 0 puts a channel to rank 1 in it and says where in
    a bundle (a dirty window slice before it, to show the offsets hold). Rank 1 posts gradients that rank 0
    answers in place, with fewer arrays or smaller ones at some steps. Both sides keep reading what
    they took while the other writes the next one (as a pipelining worker and the server do) and
    check it was not overwritten; step 5 is answered with a bundle, which recv_bundle returns instead of None."""
    place = {**shape(CHANNEL_SIZES[0]), "offset": 4096}
    memory = t.shared_window(place["offset"] + place["nbytes"] if t.rank == 0 else 0)
    check(memory.size == place["offset"] + place["nbytes"], f"rank {t.rank} maps {memory.size} bytes of the window")
    if t.rank == 0:
        memory[:] = 0xAB
        channel = in_window(memory, place, t.sync)
        channel.clear()
        t.send_bundle(1, TAG_CHANNEL, {"place": place})
        for step, sizes in enumerate(CHANNEL_SIZES):
            got = t.recv_bundle(source=1, tag=TAG_CHANNEL, timeout=60, ready=channel.gradients.ready)
            check(got is None, f"step {step}: a bundle instead of a channel post")
            words, arrays = channel.gradients.take()
            check(words[:4] == [step, 100 + step, 0.5 * step, 7 * step], f"step {step}: posted {words}")
            for i, (a, want) in enumerate(zip(arrays, channel_values(step, sizes, False), strict=True)):
                check(a.dtype == np.float32 and np.array_equal(a, want), f"step {step}: gradient array {i} differs")
            if step:  # the one before, which we could still be reading while rank 1 wrote this one: intact
                for i, (a, want) in enumerate(zip(held, channel_values(step - 1, CHANNEL_SIZES[step - 1], False))):
                    check(np.array_equal(a, want), f"step {step - 1}: gradient array {i} overwritten too early")
            held = arrays
            if step == 5:
                t.send_bundle(1, TAG_CHANNEL, {"step": step}, channel_values(step, sizes, True))
                continue
            for out, want in zip(channel.replies.arrays(sizes), channel_values(step, sizes, True)):
                out[:] = want
            channel.replies.post((step, 2 * step), sizes)
        check(channel.gradients.taken == len(CHANNEL_SIZES) and channel.replies.posted == len(CHANNEL_SIZES) - 1,
              f"{channel.gradients.taken} gradients taken, {channel.replies.posted} replies posted")
    elif t.rank == 1:
        channel = in_window(memory, t.recv_bundle(source=0, tag=TAG_CHANNEL, timeout=60).meta["place"], t.sync)
        check(not channel.replies.ready() and np.all(memory[:4096] == 0xAB), "rank 0's writes are not seen")
        previous = None

        def post(step: int) -> None:
            sizes = CHANNEL_SIZES[step]
            check(channel.fits(sizes), f"step {step}: sizes {sizes} do not fit the channel")
            for out, want in zip(channel.gradients.arrays(sizes), channel_values(step, sizes, False)):
                out[:] = want
            channel.gradients.post((step, 100 + step, 0.5 * step, 7 * step), np.array(sizes, dtype=np.int64))

        post(0)
        for step, sizes in enumerate(CHANNEL_SIZES):
            got = t.recv_bundle(source=0, tag=TAG_CHANNEL, timeout=60, ready=channel.replies.ready)
            if step == 5:
                check(got is not None and got.meta == {"step": step}, f"step {step}: no bundle answer ({got})")
                arrays = got.arrays
            else:
                check(got is None, f"step {step}: a bundle instead of a channel reply")
                words, arrays = channel.replies.take()
                check(words[:2] == [step, 2 * step], f"step {step}: reply says {words}")
            for i, (a, want) in enumerate(zip(arrays, channel_values(step, sizes, True), strict=True)):
                check(np.array_equal(a, want), f"step {step}: reply array {i} differs")
            if previous is not None:  # the answer before this one was read while this one was written
                for i, (a, want) in enumerate(zip(previous[1], channel_values(previous[0], CHANNEL_SIZES[previous[0]], True))):
                    check(np.array_equal(a, want), f"step {previous[0]}: reply array {i} overwritten too early")
            previous = (step, arrays) if step != 5 else None
            if step + 1 < len(CHANNEL_SIZES):
                post(step + 1)  # we go on reading this answer: the next one goes to the other buffer
        check(not channel.fits([10**9]), "a channel claims to fit 4 GB")


def run_shared(t: Transport) -> None:
    """The basic checks, then a channel in a shared window: arrays filled in place,
    answered in place. Nothing of ours appears in /dev/shm."""
    before = {name for name in os.listdir("/dev/shm") if name.startswith("sparsenet")}
    run_basic(t)
    channel_round_trips(t)
    t.barrier()
    ours = {name for name in os.listdir("/dev/shm") if name.startswith("sparsenet")} - before
    check(not ours, f"files of ours in /dev/shm: {sorted(ours)}")


def run_idle(t: Transport, shared: bool) -> None:
    """Rank 0 waits IDLE_SECONDS in recv (shared: for a channel post, recv_bundle with ready=); its CPU time
    must stay under 10% of the wall time."""
    channel = None
    if shared:
        place = {**shape([5, 3]), "offset": 0}
        channel = in_window(t.shared_window(place["nbytes"] if t.rank == 0 else 0), place, t.sync)
        if t.rank == 0:
            channel.clear()
    t.barrier()
    if t.rank == 1:
        time.sleep(IDLE_SECONDS)
        if channel is not None:
            channel.gradients.post((1,), [5, 3])
        else:
            t.send_bundle(0, TAG_IDLE, {"late": True})
    elif t.rank == 0:
        wall, cpu = time.perf_counter(), time.process_time()
        if channel is not None:
            got = t.recv_bundle(source=1, tag=TAG_IDLE, timeout=60, ready=channel.gradients.ready)
            check(got is None and channel.gradients.take()[0][0] == 1, "no channel post")
        else:
            got = t.recv_bundle(source=1, tag=TAG_IDLE, timeout=60)
            check(got.meta == {"late": True}, "wrong idle message")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"IDLE wall={wall:.3f}s cpu={cpu:.4f}s fraction={cpu / wall:.4f}", flush=True)
        check(wall >= 0.9 * IDLE_SECONDS, f"recv returned after {wall:.3f} s, before the message was sent")
        check(cpu < IDLE_MAX_CPU_FRACTION * wall, f"recv burned {cpu:.3f} s CPU in {wall:.3f} s")
    t.barrier()


def pattern(nbytes: int) -> np.ndarray:
    """uint8 array i % 251 (prime period, so misplaced 2**k-byte chunks change it); one allocation."""
    period = np.arange(251, dtype=np.uint8)
    out = np.empty(nbytes, dtype=np.uint8)
    whole = nbytes - nbytes % 251
    out[:whole].reshape(-1, 251)[:] = period
    out[whole:] = period[:nbytes - whole]
    return out


def sha256(array: np.ndarray) -> str:
    """Hex SHA-256 of a C-contiguous array's bytes (no copy)."""
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_big(t: Transport) -> None:
    """Rank 1 sends a 2**31 + 12345-byte uint8 array and a float32 array; rank 0 checks SHA-256."""
    if t.rank == 1:
        big = pattern(BIG_NBYTES)
        small = np.linspace(-1, 1, 1001, dtype=np.float32)
        meta = {"sha_big": sha256(big), "sha_small": sha256(small)}
        t.barrier()
        t.send_bundle(0, TAG_BIG, meta, [big, small])
    elif t.rank == 0:
        t.barrier()
        start = time.perf_counter()
        got = t.recv_bundle(source=1, tag=TAG_BIG, timeout=600)
        seconds = time.perf_counter() - start
        big, small = got.arrays
        check(big.dtype == np.uint8 and big.shape == (BIG_NBYTES,), f"big array {big.dtype} {big.shape}")
        check(small.dtype == np.float32 and small.shape == (1001,), f"small array {small.dtype} {small.shape}")
        check(sha256(big) == got.meta["sha_big"], "SHA-256 of the big array differs")
        check(sha256(small) == got.meta["sha_small"], "SHA-256 of the small array differs")
        print(f"BIG OK bytes={got.nbytes} transfer={seconds:.2f}s ({got.nbytes / seconds / 1e9:.2f} GB/s)",
              flush=True)
    else:
        t.barrier()
    t.barrier()
    print(f"rank {t.rank} peak_rss_mb={peak_rss_mb():.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--big", action="store_true", help="send one bundle larger than 2 GiB")
    mode.add_argument("--idle", action="store_true", help="measure CPU time while waiting in recv")
    parser.add_argument("--shared", action="store_true",
                        help="a channel in a shared window (with --idle: wait beside one)")
    args = parser.parse_args()
    t = Transport()
    if t.size < 2:
        sys.exit("run under mpiexec with at least 2 ranks")
    try:
        if args.shared:
            enable_shared(t)
        if args.big:
            run_big(t)
        elif args.idle:
            run_idle(t, args.shared)
        else:
            run_shared(t) if args.shared else run_basic(t)
        t.barrier()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        t.abort(1)  # never returns: ends every rank
    if t.rank == 0:
        print("ALL OK", flush=True)


if __name__ == "__main__":
    main()
