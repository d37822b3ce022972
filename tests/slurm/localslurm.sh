#!/usr/bin/env bash
# A single-node SLURM cluster on 127.0.0.1, for tests/test_slurm.py and `make slurm-test`.
#
#   localslurm.sh install     apt-get install slurm-wlm + munge when a daemon binary is missing (needs root)
#   localslurm.sh start DIR   munge key + munged, slurm.conf, slurmctld + slurmd (as root), all state under DIR;
#                             waits until `sinfo` shows the node idle; writes DIR/env.sh (SLURM_CONF=DIR/slurm.conf)
#   localslurm.sh stop DIR    cancels the cluster's jobs and stops exactly the daemons `start DIR` started
#
# Clients reach this cluster with `. DIR/env.sh`: SLURM_CONF=DIR/slurm.conf, and DIR/bin first on PATH, where
# sbatch, srun, squeue, ... are wrappers that set SLURM_CONF themselves. The wrappers are needed because the
# executor's job step (snakemake-executor-plugin-slurm-jobstep) removes every SLURM_* variable but the job's
# identity before it calls `srun` inside the job, so a bare srun would look for /etc/slurm/slurm.conf. Nothing is
# written to /etc, the munge socket is DIR/munge/munge.socket (slurm.conf's AuthInfo), and the ports are free ones
# chosen at start, so two clusters (two test runs) can coexist. Accounting is off (no slurmdbd): `sacct` cannot
# report jobs, so Snakemake's SLURM executor must poll with `--slurm-status-command squeue`; MinJobAge=3600 keeps
# finished jobs visible to squeue for an hour (the test checks every job of a run there).
set -euo pipefail

SBIN_PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH="$PATH:$SBIN_PATH"

die() { echo "localslurm: $*" >&2; exit 1; }

have_binaries() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
                  && command -v sbatch >/dev/null && command -v sinfo >/dev/null; }

cmd_install() {
    if have_binaries; then echo "localslurm: slurm-wlm and munge are installed"; return; fi
    [ "$(id -u)" = 0 ] || die "installing slurm-wlm and munge needs root (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
    have_binaries || die "slurm-wlm/munge installed but a daemon binary is still missing"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# the daemon whose pid is in FILE, if it is still running the expected binary (guards against reused pids)
pid_of() {  # FILE BINARY
    local f=$1 bin=$2 pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc 0-9 < "$f")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    # (the executable may be an alternatives name such as slurmctld-wlm; argv[0] is the name it was started as)
    [ "$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | head -1 | xargs -r basename)" = "$bin" ] || return 1
    echo "$pid"
}

wait_for() {  # SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2; shift 2
    for _ in $(seq $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    return 1
}

cmd_start() {
    local dir=${1:?usage: localslurm.sh start DIR}
    have_binaries || die "slurmctld/slurmd/munged not installed: run 'localslurm.sh install' (or 'make slurm-test')"
    [ "$(id -u)" = 0 ] || die "the local cluster runs its daemons as root"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$dir" != / ] || die "refusing / as the cluster's folder"
    # munged refuses group/other-writable directories on the socket and key paths
    chmod 700 "$dir"
    mkdir -p "$dir"/{munge,state,spool,log,run}
    chmod 700 "$dir"/munge

    # --- munge: own key, own socket
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --key-file "$dir/munge/munge.key" --socket "$dir/munge/munge.socket" \
           --pid-file "$dir/run/munged.pid" --log-file "$dir/log/munged.log" \
           --seed-file "$dir/munge/munged.seed" --num-threads 2 --force
    wait_for 20 munged test -S "$dir/munge/munge.socket" || die "munged did not start: $(tail -5 "$dir/log/munged.log")"

    # --- slurm.conf: this machine's real CPU count and (a little less than its) memory
    local cpus mem_mb ctld_port slurmd_port
    cpus=$(nproc --all)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
    cat > "$dir/slurm.conf" <<EOF
# written by tests/slurm/localslurm.sh: a single-node cluster on 127.0.0.1
ClusterName=wsss-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p "$dir/bin"
    local client real
    for client in sbatch srun squeue sinfo scontrol scancel sacct salloc; do
        real=$(PATH=$SBIN_PATH command -v "$client") || continue
        printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$dir/slurm.conf" "$real" > "$dir/bin/$client"
        chmod 755 "$dir/bin/$client"
    done
    cat > "$dir/env.sh" <<EOF
export SLURM_CONF=$dir/slurm.conf
export PATH=$dir/bin:\$PATH
EOF
    export SLURM_CONF="$dir/slurm.conf"

    # --- daemons (they daemonise and write their pid files under DIR/run)
    slurmctld -c -f "$SLURM_CONF"  # -c: no saved state
    wait_for 30 slurmctld pid_of "$dir/run/slurmctld.pid" slurmctld \
        || die "slurmctld did not start: $(tail -20 "$dir/log/slurmctld.log" 2>/dev/null)"
    wait_for 30 "slurmctld answering" scontrol ping \
        || die "slurmctld does not answer: $(tail -20 "$dir/log/slurmctld.log" 2>/dev/null)"
    slurmd -N localhost -f "$SLURM_CONF"
    wait_for 30 slurmd pid_of "$dir/run/slurmd.pid" slurmd \
        || die "slurmd did not start: $(tail -20 "$dir/log/slurmd.log" 2>/dev/null)"
    node_idle() { sinfo -h -N -n localhost -o '%t' | grep -qx 'idle'; }
    if ! wait_for 60 "node idle" node_idle; then
        scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
        wait_for 20 "node idle" node_idle || die "node not idle: $(sinfo -N -l 2>&1); $(tail -20 "$dir/log/slurmd.log")"
    fi
    echo "localslurm: up ($cpus CPUs, ${mem_mb} MB); export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    local dir=${1:?usage: localslurm.sh stop DIR} pid name
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/slurm.conf" ] && pid_of "$dir/run/slurmctld.pid" slurmctld >/dev/null; then
        SLURM_CONF="$dir/slurm.conf" timeout 20 scancel --full --quiet --partition=local >/dev/null 2>&1 || true
    fi
    # slurmd first (it ends its job steps), then the controller, then munge
    for name in slurmd slurmctld munged; do
        pid=$(pid_of "$dir/run/$name.pid" "$name") || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 60); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
        [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        echo "localslurm: stopped $name ($pid)"
    done
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    *) die "usage: localslurm.sh install | start DIR | stop DIR" ;;
esac
