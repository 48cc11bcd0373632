#!/bin/bash
# A single-node Slurm on this machine, for `make test-slurm`: munged, slurmctld and slurmd started by
# hand (no systemd), all state under $SPARSENET_SLURM_DIR (default /tmp/sparsenet-slurm).
#
#   slurm/local-cluster.sh install   # root + apt: Debian's slurm-wlm, munge, MPICH and Open MPI
#   slurm/local-cluster.sh start     # writes slurm.conf, starts the daemons, waits for the node
#   slurm/local-cluster.sh env       # prints `export SLURM_CONF=...` for sbatch/srun/scontrol
#   slurm/local-cluster.sh stop      # stops the daemons this script started (by their pid files)
#
# The node is this host with its real CPU count and no memory or cgroup enforcement
# (ProctrackType=linuxproc, TaskPlugin=none, SelectType=cons_tres counting CPUs only).
set -euo pipefail

DIR=${SPARSENET_SLURM_DIR:-/tmp/sparsenet-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
MUNGE_SOCKET=$DIR/munge/munge.socket

say() { echo "local-cluster: $*"; }

install() {
    local packages="slurm-wlm munge libmpich-dev openmpi-bin libopenmpi-dev"
    if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v mpicc.mpich >/dev/null \
        && command -v mpicc.openmpi >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || { say "not root: cannot install $packages"; return 1; }
    command -v apt-get >/dev/null || { say "no apt-get: cannot install $packages"; return 1; }
    say "installing $packages from Debian"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $packages >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $packages >/dev/null; }
}

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
    chmod 755 "$DIR"
    # Slurm refuses a node whose real memory is below RealMemory: claim a quarter of it.
    local mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 4096 ))
    cat > "$CONF.tmp" <<EOF
ClusterName=sparsenet-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SPARSENET_SLURMCTLD_PORT:-16817}
SlurmdPort=${SPARSENET_SLURMD_PORT:-16818}
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
KillWait=10
NodeName=$HOST CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    : > "$DIR/plugstack.conf"
}

running() {  # running PIDFILE: the pid in it is alive
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    install
    write_conf
    export SLURM_CONF=$CONF
    if ! running "$DIR/munged.pid"; then
        chown munge:munge "$DIR/munge"
        runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
            --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
        cp "$DIR/munge/munged.pid" "$DIR/munged.pid"
    fi
    running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    running "$DIR/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
        case "$state" in
            idle*|mixed*|allocated*) say "node $HOST is $state ($CPUS CPUs); export SLURM_CONF=$CONF"; return 0 ;;
        esac
        sleep 1
    done
    say "node $HOST did not come up (state '${state:-none}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
    return 1
}

stop() {
    local name
    for name in slurmd slurmctld munged; do
        if running "$DIR/$name.pid"; then
            kill "$(cat "$DIR/$name.pid")"
            for _ in $(seq 20); do running "$DIR/$name.pid" || break; sleep 0.5; done
            # still there after 10 s: a daemon left behind would serve the next start with stale plugins
            if running "$DIR/$name.pid"; then kill -9 "$(cat "$DIR/$name.pid")" 2>/dev/null || true; fi
        fi
        rm -f "$DIR/$name.pid"
    done
    say "stopped"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
