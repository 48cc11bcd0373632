"""How this process was started: what the launcher (srun, mpiexec) announced, checked against what MPI
sees, and srun's MPI plugin. Read by the command line, logging and parallel/run.py.

Nothing here starts MPI: the launcher's numbers come from its environment variables, and the
plugin from the MPI library's version string, which MPI gives before initialisation.

    python -m sparsenet.launch srun-mpi   # prints pmi2 / pmix (slurm/train.sbatch uses it)
"""

from __future__ import annotations

import os
import sys

# (size variable, rank variable, what started us), in the order they are trusted: an MPI's own
# variables before Slurm's, which srun sets whatever its --mpi plugin.
_LAUNCHERS = (
    ("PMI_SIZE", "PMI_RANK", "the MPI launcher"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI's mpiexec"),
    ("PMIX_SIZE", "PMIX_RANK", "the PMIx launcher"),
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "srun"),
)
SRUN_MPI_VARIABLE = "SPARSENET_SRUN_MPI"


def _announced() -> tuple[int, int, str] | None:
    """(size, rank, launcher) from the first launcher whose size variable is set, else None."""
    for size_var, rank_var, who in _LAUNCHERS:
        size, rank = os.environ.get(size_var, ""), os.environ.get(rank_var, "0")
        if size.isdigit():
            return int(size), int(rank) if rank.isdigit() else 0, who
    return None


def launcher_rank() -> int:
    """This process's rank as the launcher numbers it (0 if no launcher variable is set)."""
    announced = _announced()
    return announced[1] if announced else 0


def launched_world_size() -> int:
    """World size: MPI's if mpi4py already started MPI (python -m mpi4py), else the launcher's; starts no MPI."""
    if "mpi4py.MPI" in sys.modules and sys.modules["mpi4py.MPI"].Is_initialized():
        return sys.modules["mpi4py.MPI"].COMM_WORLD.Get_size()
    announced = _announced()
    return announced[0] if announced else 1


def srun_mpi_plugin(library_version: str) -> str | None:
    """srun's --mpi value for an MPI library, from its MPI_Get_library_version string; None if unknown."""
    if "Open MPI" in library_version:
        return "pmix"
    if any(name in library_version for name in ("MPICH", "Intel(R) MPI", "MVAPICH")):
        return "pmi2"
    return None


def world_size_mismatch(mpi_size: int) -> str | None:
    """A one-line explanation if the launcher started more processes than MPI_COMM_WORLD holds, else None."""
    announced = _announced()
    if announced is None or announced[0] == mpi_size:
        return None
    size, _, who = announced
    text = f"{who} started {size} tasks but MPI sees {mpi_size}: "
    if who == "srun":
        return text + (f"srun's MPI plugin does not match this mpi4py; try srun --mpi={_plugin_hint()} "
                       f"(slurm/train.sbatch: set {SRUN_MPI_VARIABLE})")
    return text + "the launcher belongs to another MPI than the one mpi4py was built with; use that MPI's mpiexec"


def _plugin_hint() -> str:
    try:
        plugin = srun_mpi_plugin(_library_version())
    except Exception:  # noqa: BLE001 - only a hint
        plugin = None
    return plugin or "pmi2 (MPICH) or --mpi=pmix (Open MPI)"


def _library_version() -> str:
    """MPI_Get_library_version without initialising MPI (if mpi4py has not already)."""
    import mpi4py

    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = False
    from mpi4py import MPI

    return MPI.Get_library_version()


def main(argv: list[str]) -> int:
    if argv != ["srun-mpi"]:
        print("usage: python -m sparsenet.launch srun-mpi", file=sys.stderr)
        return 2
    version = _library_version()
    plugin = srun_mpi_plugin(version)
    if plugin is None:
        first = version.strip().splitlines()[0] if version.strip() else "an unknown MPI"
        print(f"sparsenet: cannot tell srun's MPI plugin for {first}; set {SRUN_MPI_VARIABLE}", file=sys.stderr)
        return 1
    print(plugin)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
