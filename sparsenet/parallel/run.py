"""Entry point of a parallel run: every rank loads its data, rank 0 serves, ranks >= 1 work."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from .. import checkpoint as ckpt
from ..config import Config
from ..cpus import usable_cpus
from ..data import load_dataset
from ..errors import SparsenetError
from ..inputs import Preprocessing
from ..loop import CHECKPOINT, run_folder, start_run
from ..metrics import log
from ..jitcache import compile_notice
from ..selection import hold_out_validation
from ..signals import EXIT_RESUMABLE, ignore_stop_signals
from ..state import TrainingState
from ..train import set_threads
from ..launch import launcher_rank, world_size_mismatch
from .mpi_workers import TAG_MEMORY_PLAN
from .transport import ANTICIPATE


ABORT_GRACE_SECONDS = 1.0


def run_parallel(cfg: Config, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
                 fresh: bool = False) -> TrainingState | int:
    """Train with WASAP/WASSP over MPI; rank 0 returns the final state, workers their exit code
    (EXIT_RESUMABLE when the server stopped on request, else 0). Every rank returns after the
    others are done, so none is killed by the launcher for leaving first with a non-zero code.

    Any exception on any rank is reported with its rank and host and aborts the whole job.
    """
    from .transport import Transport

    transport = Transport(chunk_bytes=cfg.parallel.chunk_bytes)
    rank, host = transport.rank, transport.host
    mismatch = world_size_mismatch(transport.size)
    if mismatch is not None:  # every task is alone in its own MPI world: the first one says why
        if launcher_rank() != 0:
            raise SystemExit(2)
        raise SparsenetError(mismatch)
    transport.learn_hosts()
    transport.enable_shared_memory()
    if not _memory_gate(cfg, transport):
        return 0  # a worker that rank 0 told not to start: rank 0 reports why
    try:
        if transport.size < 2:
            raise SparsenetError("parallel training needs at least 2 ranks (1 server + 1 worker)")
        cpus, why = usable_cpus()  # Slurm's CPUs per task, else those this process may use shared by the workers
        per_rank = cpus if why == "SLURM_CPUS_PER_TASK" else cpus // (transport.size - 1)
        threads = set_threads(cfg.threads or max(1, per_rank))
        notice = compile_notice() if rank == 0 else None
        if notice:
            log(notice, rank=0)
        # Rank 0 first: a dataset that must be downloaded or unpacked is fetched once, not K+1 times.
        if rank == 0:
            data = load_dataset(cfg.data, cfg.seed)
        transport.barrier()
        if rank != 0:
            data = load_dataset(cfg.data, cfg.seed)
        data, validation = hold_out_validation(data, cfg.data.validation_fraction, cfg.seed)  # the same split on every rank
        if data.x_train.shape[0] < transport.size - 1:
            raise SparsenetError(f"{data.x_train.shape[0]} training samples cannot feed {transport.size - 1} workers")
        if getattr(data.x_train, "format", None) == "csr":
            raise SparsenetError("parallel training takes dense data only; train on CSR data sequentially "
                                 "(without mpiexec, or mpiexec -n 1)")
        if rank == 0:
            transport.barrier()  # the workers have their kernels loaded: phase 1 starts for all at once
            # From here on no healthy rank is silent for long (start-up, loading data, may be).
            transport.silence_timeout = cfg.parallel.timeout_s
            transport.anticipate = ANTICIPATE  # the server waits most of the time: fewer wake-ups
            with run_folder(out_dir, rank=0, overwrite=overwrite, fresh=fresh) as out:  # rank 0 alone holds it
                state = _serve(cfg, data, transport, out, resume, threads, validation)
            transport.barrier()
            return state
        from .worker import load_kernels, run_worker

        ignore_stop_signals()
        load_kernels(cfg, data)
        transport.barrier()
        # Twice the server's: a worker waiting for the server may be waiting out the server's own wait
        # for a silent worker, and the server, which waits on that worker directly, must be first to name it.
        timeout = cfg.parallel.timeout_s
        transport.silence_timeout = None if timeout is None else 2 * timeout
        stopped_by = run_worker(cfg, data, transport)
        transport.barrier()
        return EXIT_RESUMABLE if stopped_by else 0
    except BaseException as exc:  # noqa: BLE001 - any failure must end every rank, not hang them
        expected = isinstance(exc, (SparsenetError, MemoryError))  # bad input or out of memory: one line, exit 2
        if not expected:
            traceback.print_exc(file=sys.stderr)
        print(f"sparsenet: error: rank {rank} on {host}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        time.sleep(ABORT_GRACE_SECONDS)  # let the launcher forward our last words before it kills everyone
        code = 2 if expected else 1
        transport.abort(code)
        raise SystemExit(code) from None  # MPI_Abort returns under MPICH's mpiexec: the error is said once, above


def _memory_gate(cfg: Config, transport) -> bool:
    """Rank 0 plans memory for the ranks on its node and tells every worker go / stop before data loads.

    Ranks on other nodes are assumed to share theirs as rank 0's node does (a cluster allocation).

    A refusal ends the job without MPI_Abort: rank 0 raises the planner's message (exit 2), the
    workers return quietly.
    """
    from ..memory import check_memory

    if transport.size < 2:
        return True
    node_ranks = len(transport.node_ranks)
    if transport.rank == 0:
        error = None
        try:
            check_memory(cfg, node_ranks, say=lambda text: log(text, rank=0))
        except BaseException as exc:  # noqa: BLE001 - the workers must hear the verdict whatever happened
            error = exc
        for worker in range(1, transport.size):
            transport.send_bundle(worker, TAG_MEMORY_PLAN, {"go": error is None})
        if error is not None:
            raise error
        return True
    return bool(transport.recv_bundle(source=0, tag=TAG_MEMORY_PLAN).meta["go"])


def check_resumable(cfg: Config, saved: ckpt.CheckpointData, epoch: int, workers: int, n_train: int, path) -> None:
    """SparsenetError unless this run (`workers` workers, `n_train` samples) can continue the checkpoint
    at `path` after `epoch` epochs: not stopped inside an epoch by a sequential run, nor by a parallel
    run of other workers, phases or batch sizes; phase-2 replicas one per worker."""
    partial, p1, batch = saved.parallel_partial_epoch, cfg.phase1_epochs, cfg.train.batch_size
    stopped = partial["workers"] if partial is not None else []
    part_way = f"checkpoint {path} was stopped part-way through"
    if saved.partial_epoch:
        raise SparsenetError(f"{part_way} epoch {epoch + 1} by a sequential run; resume it with one process")
    if saved.phase == 2 and epoch < p1:
        raise SparsenetError(f"checkpoint {path} is in phase 2 at epoch {epoch}; resume it "
                             f"with parallel.phase1_epochs <= {epoch}, not {p1}")
    if partial is not None and len(stopped) != workers:
        raise SparsenetError(f"{part_way} epoch {epoch + 1} with {len(stopped)} workers; resume it with "
                             f"{len(stopped) + 1} ranks, not {workers + 1}")
    if partial is not None and saved.phase == 1 and epoch >= p1:
        raise SparsenetError(f"{part_way} phase-1 epoch {epoch + 1}; resume it with parallel.phase1_epochs > "
                             f"{epoch}, not {p1}")
    for k, entry in enumerate(stopped if saved.phase == 2 else [], start=1):
        batches = -(-len(range(k - 1, n_train, workers)) // batch)  # worker k's shard (worker.shard)
        if "position" in entry and entry["position"]["n_steps"] != batches:
            raise SparsenetError(f"{part_way} phase-2 epoch {epoch + 1} at {entry['position']['n_steps']} batches "
                                 f"per epoch on worker {k}; train.batch_size {batch} gives {batches} (keep the "
                                 "batch size of the stopped run)")
    if saved.phase == 2 and saved.replicas and len(saved.replicas) != workers:
        raise SparsenetError(f"checkpoint {path} holds {len(saved.replicas)} phase-2 replicas; resume it with "
                             f"{len(saved.replicas) + 1} ranks, not {workers + 1}")


def _serve(cfg: Config, data, transport, out: Path, resume: bool, threads: int, validation=None) -> TrainingState:
    from .mpi_workers import MPIWorkers
    from .seam import Replica
    from .server import ParameterServer

    log(f"{cfg.parallel.algorithm} on {transport.size} ranks (1 server + {transport.size - 1} workers), "
        f"{threads} kernel threads per rank; data {data.name}: {data.x_train.shape[0]} train / "
        f"{data.x_test.shape[0]} test samples", rank=0)

    def check(saved: ckpt.CheckpointData, state: TrainingState) -> None:
        check_resumable(cfg, saved, state.epoch, transport.size - 1, data.x_train.shape[0], out / CHECKPOINT)

    state, saved = start_run(cfg, out, data.n_features, data.n_classes, resume, rank=0, check=check,
                             classes=data.classes)
    state.preprocessing = Preprocessing(*data.raw_statistics(), data.classes)  # for raw samples, into the checkpoint
    version, replicas, partial = 0, None, None
    if saved is not None:
        version, partial = saved.version, saved.parallel_partial_epoch
        if saved.phase == 2 and saved.replicas:
            replicas = [Replica(*r) for r in zip(saved.replicas, saved.replica_rng_states,
                                                 saved.replica_optimizer_scalars)]
    workers = MPIWorkers(cfg, transport, state.model if state.epoch < cfg.phase1_epochs else None)
    return ParameterServer(cfg, data, workers, state, out, version, replicas, partial, validation=validation).run()
