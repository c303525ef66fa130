# shellcheck shell=bash disable=SC2034  # (variables used by the scripts that source this)
# Shared helpers for scripts/slurm-up.sh and scripts/slurm-down.sh (sourced, not run).
#
# Everything here is for a single-node *test* cluster on Debian 12 (Slurm 22.05, munge 0.5.15),
# run as root on a machine without systemd: the daemons are started and stopped directly and
# are tracked through their pid files (plus a scan of /proc by executable, never by name alone).

SLURM_CONF=/etc/slurm/slurm.conf
SLURM_LOG_DIR=/var/log/slurm
SLURMCTLD_LOG=$SLURM_LOG_DIR/slurmctld.log
SLURMD_LOG=$SLURM_LOG_DIR/slurmd.log
SLURMCTLD_PIDFILE=/run/slurmctld.pid
SLURMD_PIDFILE=/run/slurmd.pid
SLURM_STATE_DIR=/var/spool/slurmctld
SLURMD_SPOOL_DIR=/var/spool/slurmd
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PIDFILE=/run/munge/munged.pid
MUNGE_LOG=/var/log/munge/munged.log

# The real executables (Debian installs slurmctld/slurmd/slurmstepd through update-alternatives).
_real_exe() { readlink -f "$1" 2>/dev/null || printf '%s\n' "$1"; }
MUNGED_EXE=$(_real_exe /usr/sbin/munged)
SLURMCTLD_EXE=$(_real_exe /usr/sbin/slurmctld)
SLURMD_EXE=$(_real_exe /usr/sbin/slurmd)
SLURMSTEPD_EXE=$(_real_exe /usr/sbin/slurmstepd)

_msg_prefix=${_msg_prefix:-slurm}
say() { printf '%s: %s\n' "$_msg_prefix" "$*" >&2; }

# pids_of_exe EXE: pids of live processes whose executable is EXE (exact path match).
pids_of_exe() {
    local want=$1 p exe
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        [ "$exe" = "$want" ] && printf '%s\n' "${p#/proc/}"
    done
    return 0
}

# pidfile_pid PIDFILE EXE: the pid in PIDFILE if that process is alive and runs EXE.
pidfile_pid() {
    local pidfile=$1 want=$2 pid
    [ -r "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$want" ] || return 1
    printf '%s\n' "$pid"
}

# daemon_pids PIDFILE EXE: the daemon's pid(s): from its pid file, else by executable.
# (slurmstepd is a different executable, so running steps are not counted as slurmd.)
daemon_pids() {
    pidfile_pid "$1" "$2" || pids_of_exe "$2"
}

daemon_running() { [ -n "$(daemon_pids "$1" "$2")" ]; }

# stop_pids NAME GRACE_SECS PID...: SIGTERM, wait up to GRACE_SECS, then SIGKILL and reap.
stop_pids() {
    local name=$1 grace=$2; shift 2
    local pids=("$@") alive p i
    [ ${#pids[@]} -gt 0 ] || return 0
    say "stopping $name (pid ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        alive=()
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [ ${#alive[@]} -eq 0 ] && return 0
        sleep 0.1
    done
    say "$name did not exit within ${grace}s after SIGTERM; sending SIGKILL to ${alive[*]}"
    kill -KILL "${alive[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive=()
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [ ${#alive[@]} -eq 0 ] && return 0
        sleep 0.1
    done
    say "WARNING: $name pid(s) ${alive[*]} still alive after SIGKILL"
    return 1
}

# stop_daemon NAME PIDFILE EXE [GRACE_SECS]
stop_daemon() {
    local name=$1 pidfile=$2 exe=$3 grace=${4:-15}
    local pids rc=0
    mapfile -t pids < <(daemon_pids "$pidfile" "$exe")
    stop_pids "$name" "$grace" "${pids[@]}" || rc=$?
    rm -f "$pidfile"
    return $rc
}

# munge_works: a credential can be encoded and decoded through the local munged.
munge_works() {
    command -v munge >/dev/null 2>&1 && command -v unmunge >/dev/null 2>&1 || return 1
    timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1
}

# show_log_tails: the end of every daemon log, for failure reports.
show_log_tails() {
    local f n=${1:-30}
    for f in "$SLURMCTLD_LOG" "$SLURMD_LOG" "$MUNGE_LOG"; do
        if [ -s "$f" ]; then
            printf '\n----- last %s lines of %s -----\n' "$n" "$f" >&2
            tail -n "$n" "$f" >&2
        else
            printf '\n----- %s: missing or empty -----\n' "$f" >&2
        fi
    done
    printf '%s\n' '-----' >&2
}
