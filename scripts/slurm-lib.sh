# shellcheck shell=bash disable=SC2034  # (variables used by the scripts that source this)
# Shared helpers for scripts/slurm-up.sh and scripts/slurm-down.sh (sourced, not run).
#
# Everything here is for a *test* cluster on Debian 12 (Slurm 22.05, munge 0.5.15), run as root
# on a machine without systemd: a single node (the machine itself), or with --nodes N several
# nodes, each a slurmd in its own network and UTS namespace (see "Multi-node mode" below). The
# daemons are started and stopped directly and are tracked through their pid files (plus a scan
# of /proc by executable and network namespace, never by name alone).

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

# stop_daemon NAME PIDFILE EXE [GRACE_SECS] (for slurmd: the one in the root network namespace;
# the nodes' slurmds of a multi-node cluster are stopped through slurmd_pids NODE)
stop_daemon() {
    local name=$1 pidfile=$2 exe=$3 grace=${4:-15}
    local pids rc=0
    if [ "$exe" = "$SLURMD_EXE" ]; then
        mapfile -t pids < <(slurmd_pids)
    else
        mapfile -t pids < <(daemon_pids "$pidfile" "$exe")
    fi
    stop_pids "$name" "$grace" "${pids[@]}" || rc=$?
    rm -f "$pidfile"
    return $rc
}

# munge_works: a credential can be encoded and decoded through the local munged.
munge_works() {
    command -v munge >/dev/null 2>&1 && command -v unmunge >/dev/null 2>&1 || return 1
    timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1
}

# show_log_tails [LINES]: the end of every daemon log, for failure reports (the slurmd logs are
# SLURMD_LOGS when set: one per node in multi-node mode).
show_log_tails() {
    local f n=${1:-30}
    for f in "$SLURMCTLD_LOG" "${SLURMD_LOGS[@]:-$SLURMD_LOG}" "$MUNGE_LOG"; do
        if [ -s "$f" ]; then
            printf '\n----- last %s lines of %s -----\n' "$n" "$f" >&2
            tail -n "$n" "$f" >&2
        else
            printf '\n----- %s: missing or empty -----\n' "$f" >&2
        fi
    done
    printf '%s\n' '-----' >&2
}

# ---------------------------------------------------------------------------------------------
# Multi-node mode (scripts/slurm-up.sh --nodes N, N >= 2)
# ---------------------------------------------------------------------------------------------
# Node K is Slurm node "nodeK": a slurmd -N nodeK started by node_spawn (below) in the network
# namespace "nodeK" (address $LOKY_NET.(10+K), interface eth0) and its own UTS
# namespace (host name nodeK). Each namespace is joined to the root namespace by a veth pair
# (lk-nodeK in the root namespace) on the bridge $LOKY_BRIDGE ($LOKY_NET.1/24). The addresses
# exist only there: the namespaces have no default route, and an "unreachable" route for the
# /24 in the root namespace keeps that traffic on this machine even if the bridge goes away.
# Names: the root namespace's /etc/hosts gets a marked block with nodeK; each namespace gets
# /etc/netns/nodeK/hosts (bind-mounted over /etc/hosts by node_spawn, so slurmd and every job
# step see it) with nodeK and with this machine's own host name at the bridge address.
LOKY_NET=${SLURM_UP_NET:-10.77.0}
LOKY_BRIDGE=loky-br0
LOKY_MARK=loky-slurm-up                # alias of every link this script creates
LOKY_GUARD_METRIC=4242                 # metric of the "unreachable $LOKY_NET.0/24" guard route
LOKY_RUN_DIR=/run/loky-slurm           # what the multi-node cluster is made of (see record)
LOKY_MAX_NODES=32
HOSTS_BEGIN="# BEGIN loky-run scripts/slurm-up.sh test cluster nodes (removed by scripts/slurm-down.sh)"
HOSTS_END="# END loky-run scripts/slurm-up.sh test cluster nodes"
MULTI_CONF_HEADER="# Multi-node test cluster for loky-run: generated by scripts/slurm-up.sh --nodes"

# Per-node files: slurm.conf uses the same paths with %n.
node_pidfile() { printf '/run/slurmd-%s.pid\n' "$1"; }
node_log() { printf '%s/slurmd-%s.log\n' "$SLURM_LOG_DIR" "$1"; }
node_spool() { printf '/var/spool/slurmd-%s\n' "$1"; }
node_veth() { printf 'lk-%s\n' "$1"; }
node_addr() { printf '%s.%d\n' "$LOKY_NET" $((10 + ${1#node})); }
LOKY_BRIDGE_ADDR=$LOKY_NET.1

# (pid 1 may not be readable, e.g. a VM's own init: then the namespace these scripts run in)
ROOT_NETNS=$(readlink /proc/1/ns/net 2>/dev/null || readlink "/proc/$$/ns/net")
netns_of_pid() { readlink "/proc/$1/ns/net" 2>/dev/null; }
netns_exists() { [ -e "/run/netns/$1" ]; }
netns_id() { [ -e "/run/netns/$1" ] && stat -L -c 'net:[%i]' "/run/netns/$1" 2>/dev/null; }

# pids_in_netns NAME: every process whose network namespace is the named one.
pids_in_netns() {
    local want p
    want=$(netns_id "$1") || return 0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$want" ] && printf '%s\n' "${p#/proc/}"
    done
    return 0
}

# exe_pids_in_netns EXE NETNS-ID: processes running EXE in that network namespace.
exe_pids_in_netns() {
    local p
    for p in $(pids_of_exe "$1"); do
        [ "$(netns_of_pid "$p")" = "$2" ] && printf '%s\n' "$p"
    done
    return 0
}

# slurmd_pids [NODE]: the slurmd of NODE (in its namespace), or without NODE the single-node
# slurmd (in the root network namespace): from the pid file, else by executable.
slurmd_pids() {
    local node=${1:-} pidfile ns pid
    if [ -z "$node" ]; then
        pidfile=$SLURMD_PIDFILE ns=$ROOT_NETNS
    else
        pidfile=$(node_pidfile "$node")
        ns=$(netns_id "$node") || return 0
    fi
    if pid=$(pidfile_pid "$pidfile" "$SLURMD_EXE") && [ "$(netns_of_pid "$pid")" = "$ns" ]; then
        printf '%s\n' "$pid"
    else
        exe_pids_in_netns "$SLURMD_EXE" "$ns"
    fi
}
slurmd_running() { [ -n "$(slurmd_pids "${1:-}")" ]; }

# netns_ours NAME: the namespace was made by slurm-up.sh (its marker, or its eth0's alias).
netns_ours() {
    [ -e "$LOKY_RUN_DIR/netns/$1" ] && return 0
    ip -n "$1" -o link show dev eth0 2>/dev/null | grep -q "alias $LOKY_MARK"
}
# our_netns: the names of the node namespaces slurm-up.sh made, in node order.
our_netns() {
    local n
    for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^node[0-9]+$/ { print $1 }' | sort -V); do
        netns_ours "$n" && printf '%s\n' "$n"
    done
    return 0
}

# node_spawn NODE CMD...: runs CMD as a new process of NODE: in the network namespace NODE, in a
# new UTS namespace with host name NODE, and in a new mount namespace (slave of this one, so
# later mounts still show) where /etc/netns/NODE/hosts is bind-mounted over /etc/hosts. This is
# `ip netns exec NODE unshare --uts` without the remount of /sys that `ip netns exec` does: that
# hides /sys/fs/cgroup, and slurmd then stops ("Unable to initialize cgroup plugin").
node_spawn() {
    local node=$1
    shift
    # shellcheck disable=SC2016  # (expanded by that sh)
    nsenter --net="/run/netns/$node" -- unshare --uts --mount --propagation slave -- \
        /bin/sh -c 'mount --bind "/etc/netns/$0/hosts" /etc/hosts && hostname "$0" && exec "$@"' "$node" "$@"
}

# in_node NODE CMD...: runs CMD as on NODE: in its slurmd's network, UTS and mount namespaces
# (so with its host name and its /etc/hosts, like a job step there), or with node_spawn when
# NODE has no slurmd.
in_node() {
    local node=$1 pid
    shift
    pid=$(slurmd_pids "$node" | awk "NR == 1")
    if [ -n "$pid" ]; then
        nsenter -t "$pid" -n -u -m -- "$@"
    else
        node_spawn "$node" "$@"
    fi
}

# remove_hosts_block FILE: drops the marked block from FILE, in place (same inode).
remove_hosts_block() {
    local f=$1 tmp
    [ -f "$f" ] && grep -qxF "$HOSTS_BEGIN" "$f" || return 0
    tmp=$(mktemp)
    awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b { skip = 1; next } skip && $0 == e { skip = 0; next } !skip' "$f" >"$tmp"
    cat "$tmp" >"$f"
    rm -f "$tmp"
}

# remove_node_netns NAME: kills every process in the namespace (job steps, slurmd), deletes it
# (which deletes its veth pair), its /etc/netns directory and the node's spool directory.
remove_node_netns() {
    local n=$1 pids
    mapfile -t pids < <(pids_in_netns "$n")
    stop_pids "processes in namespace $n" 5 "${pids[@]}" || true
    ip link del "$(node_veth "$n")" 2>/dev/null || true
    if netns_exists "$n"; then
        say "deleting network namespace $n"
        ip netns delete "$n" || return 1
    fi
    rm -f "$LOKY_RUN_DIR/netns/$n" "$(node_pidfile "$n")"
    rm -rf "/etc/netns/$n" "$(node_spool "$n")"
}

# remove_network: every node namespace, the bridge, the guard route and the hosts block.
remove_network() {
    local n rc=0 net
    for n in $(our_netns); do remove_node_netns "$n" || rc=1; done
    for n in "$LOKY_RUN_DIR"/netns/*; do [ -e "$n" ] && rm -f "$n"; done
    if ip link show dev "$LOKY_BRIDGE" >/dev/null 2>&1; then
        say "deleting bridge $LOKY_BRIDGE"
        ip link del "$LOKY_BRIDGE" || rc=1
    fi
    net=$(sed -n 's/^NET=//p' "$LOKY_RUN_DIR/cluster" 2>/dev/null || true)
    for net in ${net:-} "$LOKY_NET"; do
        while ip route del unreachable "$net.0/24" metric "$LOKY_GUARD_METRIC" 2>/dev/null; do :; done
    done
    if grep -qxF "$HOSTS_BEGIN" /etc/hosts 2>/dev/null; then
        say "removing the node names from /etc/hosts"
        remove_hosts_block /etc/hosts || rc=1
    fi
    rm -rf "$LOKY_RUN_DIR"
    return $rc
}
