#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying pinn_lora's SLURM path (hydra/launcher=slurm)
# before going to a real cluster, and for the SLURM tests in CI.
#
#   scripts/slurm_local.sh start    # install the Debian packages when missing, write the configuration,
#                                   # start munge, MariaDB (job accounting), slurmdbd, slurmctld and slurmd
#                                   # on localhost; returns once sinfo shows the node idle
#   scripts/slurm_local.sh status   # what runs, sinfo and squeue
#   scripts/slurm_local.sh stop     # stop all of it (jobs cancelled), remove the configuration it wrote
#
# Runs as root (Debian/Ubuntu, apt-get). One node named after `hostname -s`, at 127.0.0.1, with this machine's
# cores (nproc) and 90% of its memory, in one default partition `debug`; jobs run as the submitting user. SLURM's
# accounting (sacct, which submitit uses to follow its jobs) is kept by slurmdbd in a private MariaDB server on
# 127.0.0.1 (port $SLURM_LOCAL_DB_PORT, 3307) with its data in the state directory. Nothing listens beyond
# localhost. The configuration goes to /etc/slurm/ (where the SLURM commands look for it) only when no other
# slurm.conf is there; the state, spool and logs go to $SLURM_LOCAL_DIR (default /var/tmp/pinn_lora_slurm;
# logs in its log/ folder, kept after stop until the next start).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/tmp/pinn_lora_slurm}
ETC=/etc/slurm
TAG="# written by pinn_lora scripts/slurm_local.sh"
DB_PORT=${SLURM_LOCAL_DB_PORT:-3307}
CLUSTER=pinnlora
NODE=$(hostname -s)
PACKAGES=(procps munge slurm-client slurmctld slurmd slurmdbd mariadb-server)  # procps: pgrep

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"; }

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

write_config() {
    if [ -e "$ETC/slurm.conf" ] && ! grep -qF "$TAG" "$ETC/slurm.conf"; then
        die "$ETC/slurm.conf exists and was not written by this script; it is left alone (stop that cluster first)"
    fi
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)   # MiB
    mkdir -p "$ETC" "$DIR"/{state,spool,log,run,db}
    cat > "$ETC/slurm.conf" <<EOF
$TAG
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
KillWait=10
MinJobAge=600
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$ETC/slurmdbd.conf" <<EOF
$TAG
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm_local
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    cat > "$ETC/cgroup.conf" <<EOF
$TAG
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local t=0
    until "$@" >/dev/null 2>&1; do
        t=$((t + 1))
        [ $t -le $((limit * 2)) ] || die "$what did not come up in ${limit} s (logs: $DIR/log/)"
        sleep 0.5
    done
}

start_db() {
    local sock=$DIR/run/db.sock
    if [ ! -d "$DIR/db/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root --auth-root-authentication-method=socket \
            --skip-test-db > "$DIR/log/db-install.log" 2>&1 || die "mariadb-install-db failed (see $DIR/log/db-install.log)"
    fi
    # detached, with none of this script's file descriptors (a caller piping its output gets end of file)
    (cd / && exec setsid mariadbd --no-defaults --datadir="$DIR/db" --user=root --bind-address=127.0.0.1 \
        --port="$DB_PORT" --socket="$sock" --pid-file="$DIR/run/db.pid" --log-error="$DIR/log/db.log" \
        --innodb-buffer-pool-size=64M --skip-name-resolve) </dev/null >/dev/null 2>&1 &
    wait_for 60 "MariaDB" mariadb --no-defaults --socket="$sock" -uroot -e "select 1"
    mariadb --no-defaults --socket="$sock" -uroot -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm_local';
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

node_idle() { sinfo -h -n "$NODE" -o "%t" 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

start() {
    need_root
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        node_idle && { say "already running"; sinfo; return 0; }
        die "slurmctld or slurmd is running already (not idle): run $0 stop first"
    fi
    local t0=$SECONDS
    install_packages
    rm -rf "$DIR/log" "$DIR/state" "$DIR/spool"
    write_config
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge 2>/dev/null || true
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
                                     chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 || die "munged did not start"
        echo started > "$DIR/run/munge.ours"
    fi
    wait_for 10 "munge" sh -c "munge -n | unmunge"
    start_db
    slurmdbd </dev/null >>"$DIR/log/slurmdbd.out" 2>&1 || die "slurmdbd did not start (see $DIR/log/slurmdbd.log)"
    wait_for 60 "slurmdbd" sacctmgr -n list cluster
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    slurmctld </dev/null >>"$DIR/log/slurmctld.out" 2>&1 || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
    slurmd </dev/null >>"$DIR/log/slurmd.out" 2>&1 || die "slurmd did not start (see $DIR/log/slurmd.log)"
    wait_for 60 "the node ($NODE idle in sinfo)" node_idle
    wait_for 30 "accounting (sacct)" sacct -n -X -S now
    say "up in $((SECONDS - t0)) s: node $NODE, $(nproc) CPUs, partition debug"
    sinfo
}

pid_of() { [ -s "$DIR/run/$1.pid" ] && cat "$DIR/run/$1.pid"; }

stop_daemon() {  # stop_daemon NAME: the daemon this script started (its pid file), then wait until it is gone
    local pid
    pid=$(pid_of "$1") || return 0
    kill "$pid" 2>/dev/null || { rm -f "$DIR/run/$1.pid"; return 0; }
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    rm -f "$DIR/run/$1.pid"
}

stop() {
    need_root
    if [ -f "$ETC/slurm.conf" ] && grep -qF "$TAG" "$ETC/slurm.conf" && pgrep -x slurmctld >/dev/null; then
        scancel --full --quiet 2>/dev/null || true  # every job of this cluster (it is ours)
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon slurmdbd
    stop_daemon db
    if [ -f "$DIR/run/munge.ours" ]; then
        local pid
        pid=$(cat /run/munge/munged.pid 2>/dev/null) && kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do pgrep -x munged >/dev/null || break; sleep 0.25; done
        rm -f "$DIR/run/munge.ours"
    fi
    # jobs' processes left behind by a killed slurmd (slurmstepd), if any
    for pid in $(pgrep -x slurmstepd || true); do kill -9 "$pid" 2>/dev/null || true; done
    for f in slurm.conf slurmdbd.conf cgroup.conf; do
        [ -f "$ETC/$f" ] && grep -qF "$TAG" "$ETC/$f" && rm -f "$ETC/$f"
    done
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/db" "$DIR/run"
    say "stopped (logs kept in $DIR/log/)"
}

status() {
    local any=0
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        if pgrep -x "$d" >/dev/null; then echo "$d: running (pid $(pgrep -x "$d" | tr '\n' ' '))"; any=1
        else echo "$d: not running"; fi
    done
    if [ $any = 1 ] && pgrep -x slurmctld >/dev/null; then sinfo; squeue; fi
    node_idle
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
