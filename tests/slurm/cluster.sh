#!/usr/bin/env bash
# A real single-node SLURM cluster (with accounting) for rlhf-lab's integration tests.
#
#   tests/slurm/cluster.sh start    # install (if missing) + start munge, mariadb, slurmdbd, slurmctld, slurmd
#   tests/slurm/cluster.sh stop     # stop every daemon started here (packages stay installed)
#   tests/slurm/cluster.sh status   # exit 0 iff the cluster answers (sinfo)
#   tests/slurm/cluster.sh env      # prints `export SLURM_CONF=...`:  eval "$(tests/slurm/cluster.sh env)"
#
# Everything (config, state, spool, logs, database) lives under $RLHF_LAB_SLURM_DIR
# (default /tmp/rlhf-lab-slurm). Must run as root on Debian 12 (bookworm packages, slurm 22.05).
# Daemons run as root, without systemd and without cgroups (proctrack/linuxproc, task/none).
# Ports: slurmctld 6817, slurmd 6818, slurmdbd 6819 (slurm defaults), mariadb 127.0.0.1:$RLHF_LAB_SLURM_DB_PORT.
# Keep the state dir path short: the munge and mariadb unix sockets live in it (108-byte limit).
# Harmless log noise: "mpi/pmix_v4: ... can not load PMIx library" (libpmix is only a recommended package).
#
# Optional environment:
#   RLHF_LAB_SLURM_DIR      state dir (default /tmp/rlhf-lab-slurm)
#   RLHF_LAB_SLURM_DB_PORT  TCP port of the private mariadb on 127.0.0.1 (default 33306)
#   RLHF_LAB_SLURM_CLUSTER  cluster name (default rlhflab)
set -euo pipefail

STATE_DIR="${RLHF_LAB_SLURM_DIR:-/tmp/rlhf-lab-slurm}"
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$(pwd)/$STATE_DIR" ;; esac  # slurm daemons need absolute paths
DB_PORT="${RLHF_LAB_SLURM_DB_PORT:-33306}"
CLUSTER="${RLHF_LAB_SLURM_CLUSTER:-rlhflab}"
ACCOUNT="rlhflab"
PARTITION="local"

ETC="$STATE_DIR/etc"
RUN="$STATE_DIR/run"
LOG="$STATE_DIR/log"
SPOOL="$STATE_DIR/spool"
MUNGE_DIR="$STATE_DIR/munge"          # holds the socket; must be mode 755
MUNGE_SOCK="$MUNGE_DIR/munge.socket.2"
MUNGE_KEY="$STATE_DIR/munge-key/munge.key"
DB_DIR="$STATE_DIR/mysql"
DB_SOCK="$DB_DIR/mysqld.sock"
DB_NAME="slurm_acct_db"
DB_USER="slurm"
DB_PASS="rlhf-lab-slurmdbd"

export SLURM_CONF="$ETC/slurm.conf"    # slurmdbd reads $ETC/slurmdbd.conf (beside SLURM_CONF)

PKGS=(slurm-wlm slurmctld slurmd slurm-client munge slurmdbd slurm-wlm-mysql-plugin mariadb-server)

say() { printf '[cluster.sh] %s\n' "$*" >&2; }

die() {
    # die MESSAGE [LOGFILE...]: print the message and the tail of the relevant logs, exit 1.
    local msg="$1"; shift
    say "ERROR: $msg"
    local f
    for f in "$@"; do
        if [[ -s "$f" ]]; then
            printf '[cluster.sh] ---- last lines of %s ----\n' "$f" >&2
            tail -n 40 "$f" >&2 || true
            printf '[cluster.sh] ---- end of %s ----\n' "$f" >&2
        else
            say "(log $f is empty or missing)"
        fi
    done
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.1 s until it succeeds.
# If WAIT_PIDFILE/WAIT_COMM are set, give up at once when that daemon has written its pid file and died.
wait_for() {
    local timeout="$1" what="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            say "timed out after ${timeout}s waiting for: $what"
            return 1
        fi
        if [[ -n "${WAIT_PIDFILE:-}" && -s "$WAIT_PIDFILE" ]] && ! pid_alive "$WAIT_PIDFILE" "$WAIT_COMM"; then
            say "$WAIT_COMM died while waiting for: $what"
            return 1
        fi
        sleep 0.1
    done
}

# pid_alive PIDFILE COMM: true iff PIDFILE names a live process whose command name is COMM.
pid_alive() {
    local pidfile="$1" comm="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] || return 1
    [[ -r "/proc/$pid/comm" ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]]
}

need_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (daemons run as root, packages are installed with apt-get)"
}

# ----------------------------------------------------------------------------- packages
install_packages() {
    local missing=() p
    for p in "${PKGS[@]}"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing Debian packages: ${missing[*]}"
    local aptlog="$LOG/apt.log"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >"$aptlog" 2>&1 || die "apt-get update failed" "$aptlog"
    apt-get install -y --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1 \
        || die "apt-get install failed" "$aptlog"
    # Without systemd the packages start nothing; our daemons use private sockets/pid files/ports anyway.
    say "packages installed"
}

# ----------------------------------------------------------------------------- config
node_line() {
    # The first line of `slurmd -C` verbatim (NodeName=... CPUs=... RealMemory=...).
    local line
    line="$(slurmd -C 2>/dev/null | head -n 1)" || true
    [[ "$line" == NodeName=* ]] || die "\`slurmd -C\` did not print a NodeName line: '$line'"
    printf '%s\n' "$line"
}

write_if_changed() {
    # write_if_changed FILE MODE < content; returns 0 if the file changed.
    local file="$1" mode="$2" tmp
    tmp="$(mktemp "$file.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f "$file" ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

CONFIG_CHANGED=0
STARTED=0  # set when this invocation started a daemon
write_configs() {
    local node host
    node="$(node_line)"
    host="$(hostname -s)"

    if write_if_changed "$SLURM_CONF" 0644 <<EOF; then CONFIG_CHANGED=1; fi
# Generated by tests/slurm/cluster.sh -- do not edit (rewritten on start).
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoragePass=$MUNGE_SOCK
$node
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    if write_if_changed "$ETC/slurmdbd.conf" 0600 <<EOF; then CONFIG_CHANGED=1; fi
# Generated by tests/slurm/cluster.sh -- do not edit (rewritten on start).
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

make_dirs() {
    mkdir -p "$STATE_DIR" "$ETC" "$RUN" "$LOG" "$SPOOL/slurmctld" "$SPOOL/slurmd" "$MUNGE_DIR" \
        "$(dirname "$MUNGE_KEY")" "$DB_DIR"
    # munged refuses group/world-writable dirs on the socket path; slurm clients need to reach the socket.
    chmod 755 "$STATE_DIR" "$ETC" "$RUN" "$LOG" "$SPOOL" "$MUNGE_DIR"
    chmod 700 "$(dirname "$MUNGE_KEY")"
}

# already_running NAME PIDFILE COMM LOGFILE CHECK...: true if the daemon runs and CHECK succeeds (waiting up to
# 30 s, it may be starting); dies if it runs but never answers; otherwise removes a stale pid file, false.
already_running() {
    local name="$1" pidfile="$2" comm="$3" logfile="$4"; shift 4
    if pid_alive "$pidfile" "$comm"; then
        wait_for 30 "the running $name to answer" "$@" \
            || die "$name runs (pid $(cat "$pidfile")) but does not answer; try \`$0 stop\` then start" "$logfile"
        return 0
    fi
    rm -f "$pidfile"
    return 1
}

# ----------------------------------------------------------------------------- munge
munge_ok() { munge -n --socket="$MUNGE_SOCK" 2>/dev/null | unmunge --socket="$MUNGE_SOCK" >/dev/null 2>&1; }

start_munge() {
    if already_running munged "$RUN/munged.pid" munged "$LOG/munged.log" munge_ok; then return 0; fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chmod 600 "$MUNGE_KEY"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    say "starting munged"
    STARTED=1
    munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" --pid-file="$RUN/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$MUNGE_DIR/munged.seed" --force \
        >>"$LOG/munged.log" 2>&1 || die "munged failed to start" "$LOG/munged.log"
    wait_for 10 "munge credential round trip" munge_ok || die "munged does not answer" "$LOG/munged.log"
}

# ----------------------------------------------------------------------------- mariadb
db_sql() { mariadb --no-defaults --protocol=socket --socket="$DB_SOCK" -uroot -N -B "$@"; }
db_ok() { db_sql -e 'SELECT 1' >/dev/null 2>&1; }

start_mariadb() {
    if already_running mariadbd "$DB_DIR/mariadbd.pid" mariadbd "$LOG/mariadb.log" db_ok; then return 0; fi
    if [[ ! -d "$DB_DIR/data/mysql" ]]; then
        say "initialising mariadb data dir"
        rm -rf "$DB_DIR/data"
        mariadb-install-db --no-defaults --datadir="$DB_DIR/data" --user=root \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fi
    say "starting mariadbd (127.0.0.1:$DB_PORT)"
    STARTED=1
    # mariadbd does not daemonize: detach it into its own session.
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DIR/data" --socket="$DB_SOCK" \
        --pid-file="$DB_DIR/mariadbd.pid" --log-error="$LOG/mariadb.log" \
        --port="$DB_PORT" --bind-address=127.0.0.1 \
        --innodb-buffer-pool-size=512M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        --max-allowed-packet=16M \
        </dev/null >>"$LOG/mariadb.log" 2>&1 &
    disown || true
    WAIT_PIDFILE="$DB_DIR/mariadbd.pid" WAIT_COMM=mariadbd wait_for 60 "mariadb to answer on $DB_SOCK" db_ok \
        || die "mariadbd did not come up" "$LOG/mariadb.log"
    db_sql <<EOF || die "creating the slurm accounting database/user failed" "$LOG/mariadb.log"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

# ----------------------------------------------------------------------------- slurm daemons
sacctmgr_ok() { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
sinfo_ok() { sinfo -h -o '%P' >/dev/null 2>&1; }
node_state() { sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -n 1; }
node_idle() { [[ "$(node_state)" == idle ]]; }

start_slurmdbd() {
    if already_running slurmdbd "$RUN/slurmdbd.pid" slurmdbd "$LOG/slurmdbd.log" sacctmgr_ok; then return 0; fi
    say "starting slurmdbd"
    STARTED=1
    slurmdbd >>"$LOG/slurmdbd.log" 2>&1 || die "slurmdbd failed to start" "$LOG/slurmdbd.log"
    WAIT_PIDFILE="$RUN/slurmdbd.pid" WAIT_COMM=slurmdbd wait_for 60 "slurmdbd to answer sacctmgr" sacctmgr_ok \
        || die "slurmdbd does not answer" "$LOG/slurmdbd.log"
}

register_cluster() {
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        say "registering cluster '$CLUSTER' in the accounting database"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed" "$LOG/slurmdbd.log"
    fi
    if ! sacctmgr -n -P list account "$ACCOUNT" format=account 2>/dev/null | grep -qx "$ACCOUNT"; then
        say "adding account '$ACCOUNT'"
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="rlhf-lab tests" Organization=rlhflab \
            >/dev/null || die "sacctmgr add account failed" "$LOG/slurmdbd.log"
    fi
    if ! sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user=root format=user 2>/dev/null \
        | grep -qx root; then
        sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null \
            || die "sacctmgr add user failed" "$LOG/slurmdbd.log"
    fi
}

start_slurmctld() {
    if already_running slurmctld "$RUN/slurmctld.pid" slurmctld "$LOG/slurmctld.log" sinfo_ok; then return 0; fi
    say "starting slurmctld"
    STARTED=1
    slurmctld -f "$SLURM_CONF" >>"$LOG/slurmctld.log" 2>&1 || die "slurmctld failed to start" "$LOG/slurmctld.log"
    WAIT_PIDFILE="$RUN/slurmctld.pid" WAIT_COMM=slurmctld wait_for 60 "slurmctld to answer sinfo" sinfo_ok \
        || die "slurmctld does not answer" "$LOG/slurmctld.log"
}

start_slurmd() {
    if already_running slurmd "$RUN/slurmd.pid" slurmd "$LOG/slurmd.log" true; then return 0; fi
    say "starting slurmd"
    STARTED=1
    slurmd -f "$SLURM_CONF" >>"$LOG/slurmd.log" 2>&1 || die "slurmd failed to start" "$LOG/slurmd.log"
    # The pid file appears only after the command has returned.
    wait_for 30 "slurmd pid file" pid_alive "$RUN/slurmd.pid" slurmd || die "slurmd did not stay up" "$LOG/slurmd.log"
}

wait_node_idle() {
    local deadline=$((SECONDS + 60)) st node
    while :; do
        st="$(node_state)"
        case "$st" in
            idle) return 0 ;;
            mixed | allocated | completing) return 0 ;;  # the node works; someone's jobs are running
            down* | drain* | fail*)
                node="$(sinfo -h -N -p "$PARTITION" -o '%N' | head -n 1)"
                say "node $node is '$st' ($(sinfo -h -N -o '%E' | head -n 1)); resuming it"
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                ;;
        esac
        if ((SECONDS >= deadline)); then
            die "node never became idle (state '$st')" "$LOG/slurmd.log" "$LOG/slurmctld.log"
        fi
        sleep 0.2
    done
}

smoke_test() {
    local out
    out="$(timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 -J cluster-sh-smoke /bin/echo rlhf-lab-slurm-ok 2>&1)" \
        || die "trivial srun job failed: $out" "$LOG/slurmctld.log" "$LOG/slurmd.log"
    [[ "$out" == *rlhf-lab-slurm-ok* ]] || die "trivial srun job printed '$out'" "$LOG/slurmd.log"
}

# ----------------------------------------------------------------------------- subcommands
stop_daemons() {
    # stop_daemons NAME:PIDFILE:COMM...: SIGTERM them all at once, wait (30 s) for all to exit, then SIGKILL.
    local spec name pidfile comm pid i alive
    local -a pids=() names=()
    for spec in "$@"; do
        IFS=: read -r name pidfile comm <<<"$spec"
        if pid_alive "$pidfile" "$comm"; then
            pid="$(tr -dc '0-9' <"$pidfile")"
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        fi
        rm -f "$pidfile"
    done
    ((${#pids[@]})) || return 0
    for ((i = 0; i < 300; i++)); do
        alive=0
        for pid in "${pids[@]}"; do [[ -d "/proc/$pid" ]] && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if [[ -d "/proc/${pids[$i]}" ]]; then
            say "${names[$i]} did not exit after 30 s; sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
    sleep 0.5
}

stop_slurm_daemons() {
    # slurmctld flushes accounting records to slurmdbd on shutdown: stop slurmdbd after it.
    stop_daemons "slurmd:$RUN/slurmd.pid:slurmd" "slurmctld:$RUN/slurmctld.pid:slurmctld"
    stop_daemons "slurmdbd:$RUN/slurmdbd.pid:slurmdbd"
}

cmd_stop() {
    stop_slurm_daemons
    stop_daemons "mariadbd:$DB_DIR/mariadbd.pid:mariadbd" "munged:$RUN/munged.pid:munged"
    say "cluster stopped (state kept in $STATE_DIR)"
}

cmd_start() {
    need_root
    local t0=$SECONDS
    mkdir -p "$LOG"
    install_packages
    make_dirs
    write_configs
    if ((CONFIG_CHANGED)) && { pid_alive "$RUN/slurmctld.pid" slurmctld || pid_alive "$RUN/slurmd.pid" slurmd \
        || pid_alive "$RUN/slurmdbd.pid" slurmdbd; }; then
        say "configuration changed: restarting the slurm daemons"
        stop_slurm_daemons
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    register_cluster
    start_slurmctld
    start_slurmd
    wait_node_idle
    if ((STARTED)) || [[ "$(node_state)" == idle ]]; then
        smoke_test
    else
        say "all daemons were already up and the node is busy ($(node_state)): skipping the smoke job"
    fi
    say "cluster '$CLUSTER' is up: partition '$PARTITION' on $(hostname -s) ($((SECONDS - t0)) s); state in $STATE_DIR"
    echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_status() {
    [[ -f "$SLURM_CONF" ]] || { say "not configured ($SLURM_CONF missing)"; return 1; }
    command -v sinfo >/dev/null 2>&1 || { say "sinfo not installed"; return 1; }
    # Fail fast when our controller is not running (sinfo would retry its connection for seconds).
    pid_alive "$RUN/slurmctld.pid" slurmctld || { say "slurmctld is not running"; return 1; }
    if timeout 10 sinfo -h -o '%P %a %D %T' 2>/dev/null; then
        return 0
    fi
    say "cluster does not answer (sinfo failed)"
    return 1
}

cmd_env() { echo "export SLURM_CONF=$SLURM_CONF"; }

usage() {
    echo "usage: $0 {start|stop|status|env}" >&2
    exit 2
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) usage ;;
esac
