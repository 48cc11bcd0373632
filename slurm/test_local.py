"""`make test-slurm`: slurm/train.sbatch on a real single-node Slurm, stopped by Slurm's timed signal.

Starts the local cluster (slurm/local-cluster.sh), cancels any job an earlier run left in it (the
cluster keeps its jobs across restarts), then for each MPI flavour submits train.sbatch
with a small WASSP run (--signal=USR1@90), and checks that Slurm's SIGUSR1 made every rank exit
with 75, the job requeued itself and resumed, and the run completed with every epoch logged once,
each epoch's numbers (losses, accuracy, nnz) bit-identical to those of an uninterrupted run of the
same config under mpiexec (the project venv's MPICH), run beside the jobs.
So that the signal lands mid-run whatever the machine's speed, the test lowers the job's time
limit (scontrol update) once the first epoch is logged, to 90-150 s from then: Slurm's own timer
then sends the signal; once the job has been requeued, the limit goes back up so that the resumed
segment finishes. Flavours:
  pip-mpich     the project's venv (mpi4py's wheel, MPICH from `pip install mpich`)
  debian-mpich  a venv whose mpi4py is built against Debian's MPICH, as the README tells users:
                `pip install --no-binary mpi4py --no-cache-dir mpi4py` (built once, kept in the cluster folder)
  openmpi       the same against Debian's Open MPI (MPICC=mpicc.openmpi); srun --mpi=pmix
Also: srun with the wrong MPI plugin (--mpi=none) ends with the one-line world-size error, and an
exception on one rank aborts the whole step under srun (with every flavour).

Without root and apt (and no Slurm installed) it prints one line saying why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local-cluster.sh"
DIR = Path(os.environ.get("SPARSENET_SLURM_DIR", "/tmp/sparsenet-slurm"))
SMALL = ["data.name=synthetic", "data.samples=3000", "data.features=30", "data.informative=8", "data.redundant=4",
         "data.classes=3", "model.hidden=[40,32]", "model.epsilon=5", "train.batch_size=16", "train.lr=0.01",
         "train.progress=false", "checkpoint.every=1", "seed=3", "parallel.algorithm=wassp"]


def say(text: str) -> None:
    print(f"test-slurm: {text}", flush=True)


def skip_reason() -> str | None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", *MPICC.values())):
        return None
    if os.geteuid() != 0:
        return "skipped: Slurm is not installed and installing it needs root"
    if shutil.which("apt-get") is None:
        return "skipped: Slurm is not installed and there is no apt-get to install it"
    return None


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, capture_output=True, env=ENV, **kw)


# Flavours whose mpi4py is built from source, as the README tells cluster users: the MPI's compiler wrapper.
MPICC = {"debian-mpich": "mpicc.mpich", "openmpi": "mpicc.openmpi"}


def source_venvs(names: list[str]) -> dict[str, Path]:
    """Venvs with mpi4py compiled against each named Debian MPI and this checkout's sparsenet.

    Built once and kept in the cluster folder; the mpi4py builds (one C file each) run side by side.
    """
    venvs = {name: DIR / f"venv-{name}" for name in names}
    builds = {}
    for name, venv in venvs.items():
        if (venv / ".built").exists():
            continue
        shutil.rmtree(venv, ignore_errors=True)
        say(f"building {venv}: mpi4py from source against {MPICC[name]} (several minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        builds[name] = subprocess.Popen(pip + ["--no-binary", "mpi4py", "--no-cache-dir", "mpi4py"],
                                        env={**os.environ, "MPICC": shutil.which(MPICC[name]) or "mpicc"})
    for name, build in builds.items():
        if build.wait() != 0:
            raise SystemExit(f"test-slurm: building mpi4py against {MPICC[name]} failed (exit {build.returncode})")
        pip = [str(venvs[name] / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["-e", f"{ROOT}[sklearn]"], check=True)  # one at a time: they share ROOT's egg-info
        (venvs[name] / ".built").touch()
    for venv in venvs.values():
        python = venv / "bin" / "python"
        where = run([str(python), "-c", "import sparsenet; print(sparsenet.__file__)"]).stdout.strip()
        if not where.startswith(str(ROOT)):
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    return venvs


def srun_plugin(venv: Path) -> str:
    """The --mpi value train.sbatch picks for this venv's mpi4py."""
    proc = run([str(venv / "bin" / "python"), "-m", "sparsenet.launch", "srun-mpi"])
    return proc.stdout.strip() or f"? ({proc.stderr.strip()})"


def mpi_library(venv: Path) -> str:
    """Path of the libmpi the venv's mpi4py loads and the first line of its version."""
    code = ("import mpi4py; mpi4py.rc.initialize = False\nfrom mpi4py import MPI\n"
            "maps = [l.split()[-1] for l in open('/proc/self/maps') if 'libmpi' in l]\n"
            "print(maps[0] if maps else '?', '|', MPI.Get_library_version().splitlines()[0])")
    return run([str(venv / "bin" / "python"), "-c", code]).stdout.strip()


def job_info(job: str) -> dict[str, str]:
    text = run(["scontrol", "show", "job", job]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def submit(name: str, venv: Path, epochs: int, minutes: int, signal_at: int) -> tuple[str, Path]:
    out = ROOT / "runs" / f"test-slurm-{name}"
    shutil.rmtree(out, ignore_errors=True)
    sets = job_sets(epochs)
    cmd = ["sbatch", "--parsable", f"--job-name=test-{name}", "--ntasks=3", "--cpus-per-task=1", "--overcommit",
           f"--time={minutes}", f"--signal=USR1@{signal_at}", "slurm/train.sbatch", "configs/fashion_mnist.yaml",
           str(out.relative_to(ROOT)), *sets]
    proc = subprocess.run(cmd, text=True, capture_output=True, cwd=ROOT, env={**ENV, "VENV": str(venv)})
    if proc.returncode != 0:
        raise SystemExit(f"test-slurm: sbatch failed: {proc.stderr.strip()}")
    job = proc.stdout.strip().split(";")[0]
    say(f"{name}: job {job}, {epochs} epochs, --time={minutes} --signal=USR1@{signal_at}, VENV={venv}")
    return job, out


def seconds(text: str) -> int:
    """Slurm's [D-]HH:MM:SS as seconds."""
    days, _, rest = text.rpartition("-")
    h, m, s = (int(x) for x in rest.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def epochs_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def check_job(name: str, job: str, out: Path, epochs: int) -> list[str]:
    """Problems with a finished job (empty: it passed); prints what happened."""
    info = job_info(job)
    log = (ROOT / "slurm" / "logs" / f"test-{name}-{job}.out").read_text(errors="replace")
    rows = metrics_rows(out)
    logged = [r["epoch"] for r in rows]
    stops = re.findall(r"SIGUSR1 received.*", log)
    task_codes = re.findall(r"task (\S+): Exited with exit code (\d+)", log)
    say(f"{name}: state {info.get('JobState')}, exit {info.get('ExitCode')}, restarts {info.get('Restarts')}, "
        f"{len(logged)} epochs logged; stops: {stops}")
    problems = []
    if info.get("JobState") != "COMPLETED" or info.get("ExitCode") != "0:0":
        problems.append(f"job ended {info.get('JobState')} with {info.get('ExitCode')}")
    if int(info.get("Restarts", 0)) < 1 or not stops:
        problems.append("Slurm's signal never stopped the run (no requeue)")
    if not any(re.search(r"stopped (after|in) epoch", stop) for stop in stops):  # in: part-way through one
        problems.append("no stop landed in or after an epoch (only during start-up)")
    if logged != list(range(1, epochs + 1)):
        problems.append(f"epochs logged {logged}, expected 1..{epochs} once each")
    if len(stops) != int(info.get("Restarts", -1)):
        problems.append(f"{len(stops)} stops logged but {info.get('Restarts')} restarts")
    bad = [(t, c) for t, c in task_codes if c != "75"]
    if bad or re.search(r"Killed|CANCELLED AT .* DUE TO TIME LIMIT|srun exited with [^0]", log):
        problems.append(f"a rank was killed or exited with another code than 75: {bad}")
    for a, b in zip(rows, rows[1:]):
        if b["bytes_sent"] < a["bytes_sent"]:
            problems.append(f"bytes_sent went back from {a['bytes_sent']} to {b['bytes_sent']} at epoch {b['epoch']}")
            break
    return problems


def job_sets(epochs: int) -> list[str]:
    return [a for item in SMALL + [f"train.epochs={epochs}"] for a in ("--set", item)]


def start_reference(epochs: int) -> tuple[subprocess.Popen, Path]:
    """The jobs' run, never stopped, under the project venv's mpiexec (3 ranks, one thread each), in the background."""
    out = ROOT / "runs" / "test-slurm-reference"
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(exist_ok=True)
    venv = ROOT / ".venv" / "bin"
    cmd = [str(venv / "mpiexec"), "-n", "3", str(venv / "python"), "-m", "sparsenet", "train", "configs/fashion_mnist.yaml",
           "--out", str(out), *job_sets(epochs)]
    env = {**ENV, "HYDRA_LAUNCHER": "fork", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    with open(out.parent / "test-slurm-reference.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    say(f"reference: mpiexec -n 3, {epochs} epochs, never stopped, into {out}")
    return proc, out


NUMBERS = ("epoch", "phase", "train_loss", "test_loss", "test_accuracy", "nnz")


def metrics_rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def compare_numbers(reference: Path, outs: dict[str, Path]) -> list[str]:
    """Every stopped-and-resumed run must have the reference's numbers in every epoch, bit for bit."""
    expected = metrics_rows(reference)
    last = expected[-1] if expected else {}
    say(f"reference: {len(expected)} epochs, last train loss {last.get('train_loss')!r}, "
        f"test loss {last.get('test_loss')!r}")
    problems = []
    for name, out in outs.items():
        rows = metrics_rows(out)
        say(f"{name}: last train loss {rows[-1].get('train_loss')!r}, test loss {rows[-1].get('test_loss')!r}"
            if rows else f"{name}: no metrics")
        if len(rows) != len(expected):
            problems.append(f"{name}: {len(rows)} rows, the uninterrupted reference {len(expected)}")
        for a, b in zip(expected, rows):
            if [a.get(k) for k in NUMBERS] != [b.get(k) for k in NUMBERS]:
                problems.append(f"{name}: epoch {b.get('epoch')} differs from the uninterrupted reference: "
                                + ", ".join(f"{k} {b.get(k)!r} vs {a.get(k)!r}" for k in NUMBERS if a.get(k) != b.get(k)))
                break
    return problems


def srun_checks(venvs: dict[str, Path]) -> list[str]:
    """A wrong --mpi plugin (first flavour) and an exception on one rank (every flavour), under srun directly."""
    problems = []
    base = ["srun", "-n", "3", "--overcommit", "--time=5"]
    sets = [a for item in SMALL[:8] + ["train.epochs=2", "train.progress=false"] for a in ("--set", item)]
    first = next(iter(venvs.values()))
    train = [str(first / "bin" / "python"), "-m", "sparsenet", "train", "configs/fashion_mnist.yaml"]
    proc = subprocess.run(base + ["--mpi=none"] + train + ["--out", "runs/test-slurm-mismatch", "--overwrite"] + sets,
                          text=True, capture_output=True, cwd=ROOT, env=ENV, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sparsenet: error")]
    say(f"--mpi=none: exit {proc.returncode}: {errors}")
    if proc.returncode != 2 or len(errors) != 1 or "srun started 3 tasks but MPI sees 1" not in errors[0]:
        problems.append(f"--mpi=none: expected exit 2 and one world-size line, got {proc.returncode}: {proc.stderr[-500:]}")
    fault = ["--set", "debug.fail_rank=2", "--set", "debug.fail_at_step=5"]
    for name, venv in venvs.items():
        train = [str(venv / "bin" / "python"), "-m", "sparsenet", "train", "configs/fashion_mnist.yaml"]
        start = time.monotonic()
        proc = subprocess.run(base + [f"--mpi={srun_plugin(venv)}"] + train
                              + ["--out", f"runs/test-slurm-fault-{name}", "--overwrite"] + sets + fault,
                              text=True, capture_output=True, cwd=ROOT, env=ENV, timeout=600)
        named = [line for line in proc.stderr.splitlines() if line.startswith("sparsenet: error: rank 2 on ")]
        say(f"{name}: fault on rank 2: exit {proc.returncode} after {time.monotonic() - start:.0f} s: {named}")
        if proc.returncode in (0, 75) or not named:
            problems.append(f"{name}: fault on rank 2: expected the step aborted with the rank named, "
                            f"got {proc.returncode}: {proc.stderr[-500:]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--minutes", type=int, default=30, help="job time limit (lowered once the run trains)")
    parser.add_argument("--signal-at", type=int, default=90, help="seconds before the limit Slurm signals")
    parser.add_argument("--timeout", type=int, default=1800, help="give up after this many seconds")
    parser.add_argument("--flavours", default="pip-mpich,debian-mpich,openmpi")
    parser.add_argument("--keep-running", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        print(f"test-slurm: {reason}")
        return 0
    subprocess.run(["bash", str(CLUSTER), "start"], check=True)
    started = time.monotonic()
    reference = None
    try:
        flavours = args.flavours.split(",")
        unknown = set(flavours) - {"pip-mpich", *MPICC}
        if unknown:
            raise SystemExit(f"test-slurm: unknown flavour(s) {sorted(unknown)}; known: pip-mpich, {', '.join(MPICC)}")
        venvs = {"pip-mpich": ROOT / ".venv", **source_venvs([name for name in flavours if name in MPICC])}
        venvs = {name: venvs[name] for name in flavours}
        left = run(["squeue", "-h", "-o", "%i %j %T"]).stdout.split("\n")
        left = [line for line in left if line.strip()]
        if left:  # the cluster's saved state keeps them across restarts; they would hold its CPUs
            say(f"cancelling jobs left in the local cluster by earlier runs: {left}")
            run(["scancel", *(line.split()[0] for line in left)])
        for name in flavours:
            say(f"{name}: {mpi_library(venvs[name])}; train.sbatch picks srun --mpi={srun_plugin(venvs[name])}")
        problems = srun_checks(venvs)
        jobs = {name: submit(name, venvs[name], args.epochs, args.minutes, args.signal_at) for name in flavours}
        reference, reference_out = start_reference(args.epochs)
        deadline = time.monotonic() + args.timeout
        pending = dict(jobs)
        shortened = set()
        while pending and time.monotonic() < deadline:
            time.sleep(3)
            for name, (job, out) in list(pending.items()):
                info = job_info(job)
                restarts = int(info.get("Restarts", 0))
                if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                            "OUT_OF_MEMORY"):
                    del pending[name]
                elif (restarts == 0 and name not in shortened and info.get("JobState") == "RUNNING"
                      and epochs_logged(out) >= 1):
                    limit = -(-(seconds(info["RunTime"]) + args.signal_at) // 60)  # signal due within 0-60 s
                    run(["scontrol", "update", f"JobId={job}", f"TimeLimit={limit}"])
                    shortened.add(name)
                    say(f"{name}: {epochs_logged(out)} epochs after {info['RunTime']}; time limit lowered to {limit} min")
                elif restarts >= 1 and seconds(info.get("TimeLimit", "0:0:0")) != 60 * args.minutes:
                    run(["scontrol", "update", f"JobId={job}", f"TimeLimit={args.minutes}"])
                    say(f"{name}: requeued; time limit back to {args.minutes} min")
        for name in pending:
            problems.append(f"{name}: job {jobs[name][0]} not finished after {args.timeout} s")
            run(["scancel", jobs[name][0]])
        for name, (job, out) in jobs.items():
            if name not in pending:
                problems += [f"{name}: {p}" for p in check_job(name, job, out, args.epochs)]
        try:
            code = reference.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(reference.pid, signal.SIGKILL)
            code = reference.wait()
            problems.append(f"reference: not finished after {args.timeout} s")
        if code != 0:
            problems.append(f"reference: mpiexec exited with {code}; see {reference_out.parent / 'test-slurm-reference.log'}")
        problems += compare_numbers(reference_out, {name: out for name, (_, out) in jobs.items() if name not in pending})
    finally:
        if reference is not None and reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)
            reference.wait()
        if not args.keep_running:
            subprocess.run(["bash", str(CLUSTER), "stop"])
    say(f"{time.monotonic() - started:.0f} s in all")
    for p in problems:
        print(f"test-slurm: FAIL: {p}")
    if not problems:
        say("passed")
    return 1 if problems else 0


ENV = {**os.environ, "SLURM_CONF": str(DIR / "slurm.conf")}

if __name__ == "__main__":
    sys.exit(main())
