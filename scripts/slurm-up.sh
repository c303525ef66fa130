#!/usr/bin/env bash
# scripts/slurm-up.sh — bring up a Slurm test cluster on this machine (for the tests, and by hand):
# a single node (the default), or with --nodes N several nodes, each in its own namespaces.
#
# Run as root on Debian 12 (Slurm 22.05, munge 0.5.15) without systemd. It
#   1. installs slurmctld slurmd slurm-client munge (only if missing),
#   2. creates the munge key if missing and starts munged (as user munge) if not working,
#   3. checks for state another local cluster left behind (see "Leftovers" below),
#   4. with --nodes N (N >= 2): creates the network namespaces node1..nodeN, each joined by a
#      veth pair to the bridge loky-br0 (10.77.0.1/24; nodeK is 10.77.0.(10+K)), and the names
#      (a marked block in /etc/hosts, /etc/netns/nodeK/hosts) — see slurm-lib.sh,
#   5. writes /etc/slurm/slurm.conf (rewritten only when the generated text differs): one node
#      named `hostname -s` with its CPU count and memory, or nodes node1..nodeN with
#      SLURM_UP_CPUS_PER_NODE CPUs each,
#   6. starts slurmctld and slurmd as root (restarting both if the config changed; if the set
#      of nodes changed, all jobs are cancelled first); with --nodes, one slurmd per node, as
#        ip netns exec nodeK unshare --uts sh -c 'hostname nodeK; exec slurmd -N nodeK'
#      (in effect: see node_spawn in slurm-lib.sh),
#   7. waits (bounded) until every node is idle, resuming it if it is down or drained,
#   8. prints `sinfo` and a one-line success message.
# Idempotent: a second run with the daemons up and the config unchanged changes nothing (it
# repairs what is missing: a stopped slurmd, a link set down, a deleted namespace).
# Switching between --nodes 1 and --nodes N reconfigures: the namespaces of nodes no longer
# wanted are removed with everything running in them.
# On failure it exits non-zero with a message and the tail of the daemon logs.
#
# Leftovers of another local cluster are named with what to do, never deleted: a
# /var/spool/slurmctld/clustername of another ClusterName (slurmctld would stop with CLUSTER
# NAME MISMATCH; --move-leftovers moves that state aside), a slurmctld of another cluster still
# running, /etc/hosts lines or network namespaces named nodeK that this script did not make,
# another interface in 10.77.0.0/24. munge's own files (log, seed, key) owned by someone else
# than user munge (munged refuses to start) are given back to munge, with a message.
#
# Usage: scripts/slurm-up.sh [--nodes N] [--move-leftovers]
# Environment:
#   SLURM_UP_NODES          default for --nodes (default 1)
#   SLURM_UP_TIMEOUT        seconds to wait for each daemon / the nodes to become ready (default 60)
#   SLURM_UP_PARTITION      partition name (default "debug")
#   SLURM_UP_CPUS_PER_NODE  CPUs declared per node with --nodes (default 2; more than the machine
#                           has is fine: SlurmdParameters=config_overrides)
#   SLURM_UP_SLURMD_TIMEOUT SlurmdTimeout with --nodes: how long slurmctld takes to mark a node
#                           whose slurmd stopped answering DOWN (default 30; Slurm's is 300)
#   SLURM_UP_NET            the /24 used with --nodes, as its first three numbers (default 10.77.0)
#   SLURM_UP_MOVE_LEFTOVERS=1  same as --move-leftovers
# Stop everything again with scripts/slurm-down.sh.
set -euo pipefail
export LC_ALL=C
_msg_prefix=slurm-up
# shellcheck source=slurm-lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/slurm-lib.sh"

usage() {
    sed -n 's/^# Usage: //p' "${BASH_SOURCE[0]}"
    echo "(see the comment at the top of ${BASH_SOURCE[0]})"
}
NODES=${SLURM_UP_NODES:-1}
MOVE_LEFTOVERS=${SLURM_UP_MOVE_LEFTOVERS:-0}
while [ $# -gt 0 ]; do
    case $1 in
    --nodes)
        [ $# -ge 2 ] || { say "ERROR: --nodes needs a number"; usage >&2; exit 2; }
        NODES=$2
        shift 2
        ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    --move-leftovers) MOVE_LEFTOVERS=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) say "ERROR: unknown argument '$1'"; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$NODES" =~ ^[0-9]+$ ]] || [ "$NODES" -lt 1 ] || [ "$NODES" -gt "$LOKY_MAX_NODES" ]; then
    say "ERROR: --nodes must be a number from 1 to $LOKY_MAX_NODES, not '$NODES'"
    exit 2
fi
NODES=$((10#$NODES))
MULTI=
[ "$NODES" -gt 1 ] && MULTI=1

TIMEOUT=${SLURM_UP_TIMEOUT:-60}
PARTITION=${SLURM_UP_PARTITION:-debug}
CPUS_PER_NODE=${SLURM_UP_CPUS_PER_NODE:-2}
SLURMD_TIMEOUT=${SLURM_UP_SLURMD_TIMEOUT:-30}
PACKAGES=(slurmctld slurmd slurm-client munge)
NODE_NAMES=()
if [ -n "$MULTI" ]; then
    [[ "$LOKY_NET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { say "ERROR: SLURM_UP_NET must look like 10.77.0, not '$LOKY_NET'"; exit 2; }
    [[ "$CPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || { say "ERROR: SLURM_UP_CPUS_PER_NODE must be a positive number"; exit 2; }
    [[ "$SLURMD_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || { say "ERROR: SLURM_UP_SLURMD_TIMEOUT must be a positive number of seconds"; exit 2; }
    for ((k = 1; k <= NODES; k++)); do NODE_NAMES+=("node$k"); done
    SLURMD_LOGS=()
    for n in "${NODE_NAMES[@]}"; do SLURMD_LOGS+=("$(node_log "$n")"); done
fi
CLUSTER_WHAT="single-node Slurm cluster"
[ -n "$MULTI" ] && CLUSTER_WHAT="$NODES-node Slurm cluster"

fail() {
    trap - ERR
    say "ERROR: $*"
    if command -v sinfo >/dev/null 2>&1 && [ -r "$SLURM_CONF" ] &&
        daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE"; then
        printf '\n----- sinfo -R -----\n' >&2
        timeout 5 sinfo -R >&2 2>&1 || true
    fi
    show_log_tails 30
    say "FAILED: the $CLUSTER_WHAT is not available (see above)."
    exit 1
}

# leftover WHAT...: state this script did not make is in the way: say so and what to do, and
# stop (no log tails: the daemons are not the problem).
leftover() {
    trap - ERR
    local line
    for line in "$@"; do say "$line"; done
    say "FAILED: the $CLUSTER_WHAT is not available: leftovers of another cluster are in the way (see above)."
    exit 1
}

[ "$(id -u)" -eq 0 ] || { say "ERROR: must run as root"; exit 1; }
set -E
# (Only in the script itself: a failing command in a $(...) makes that substitution fail, which
# the script then checks or reports here.)
trap 'rc=$?; [ "$BASH_SUBSHELL" -eq 0 ] || exit $rc; fail "command failed (line $LINENO, exit status $rc): $BASH_COMMAND"' ERR

# Serialize concurrent runs (e.g. several test processes bringing the cluster up at once).
# The daemons are started with '9>&-': a daemon inheriting fd 9 would hold the lock forever.
exec 9>/run/loky-slurm-up.lock
flock -w 900 9 || fail "another slurm-up.sh holds /run/loky-slurm-up.lock"

# ---------------------------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -qx 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' maintainer scripts from trying to start daemons through init scripts:
    # we start them ourselves once slurm.conf exists.
    added_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        added_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_opts=(-q -o DPkg::Lock::Timeout=120)
    timeout 600 apt-get "${apt_opts[@]}" update 9>&- >&2 || fail "apt-get update failed"
    timeout 900 apt-get "${apt_opts[@]}" install 9>&- -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${PACKAGES[@]}" >&2 || fail "apt-get install ${PACKAGES[*]} failed"
    if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi
for c in munged munge unmunge slurmctld slurmd slurmstepd sinfo scontrol srun; do
    command -v "$c" >/dev/null 2>&1 || fail "$c not found after installing ${PACKAGES[*]}"
done
# Re-resolve the executables now that the packages are there.
MUNGED_EXE=$(_real_exe /usr/sbin/munged)
SLURMCTLD_EXE=$(_real_exe /usr/sbin/slurmctld)
SLURMD_EXE=$(_real_exe /usr/sbin/slurmd)
SLURMSTEPD_EXE=$(_real_exe /usr/sbin/slurmstepd)

# ---------------------------------------------------------------------------------------------
# 2. munge
# ---------------------------------------------------------------------------------------------
# munged refuses to run if these are group/world writable or owned by someone else.
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
# The same holds for its files: a munged once run as root (another setup) leaves a log or seed
# owned by root, and munged then stops with "Logfile is insecure". They are munge's own files:
# give them back (the key is handled below).
for f in "$MUNGE_LOG" /var/lib/munge/munged.seed; do
    [ -e "$f" ] || continue
    owner=$(stat -c %U:%G "$f")
    if [ "$owner" != munge:munge ]; then
        say "$f is owned by $owner, not munge:munge (left by a munged run as another user?): giving it back to munge"
        chown munge:munge "$f"
    fi
    if [ -n "$(find "$f" -perm /022)" ]; then
        say "$f is group or world writable: removing that permission (munged refuses otherwise)"
        chmod go-w "$f"
    fi
done
if [ ! -s "$MUNGE_KEY" ]; then
    say "creating munge key $MUNGE_KEY"
    rm -f "$MUNGE_KEY"
    if ! runuser -u munge -- mungekey --create --keyfile="$MUNGE_KEY" >&2; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none) ||
            fail "cannot create $MUNGE_KEY"
    fi
fi
owner=$(stat -c %U:%G "$MUNGE_KEY")
[ "$owner" = munge:munge ] ||
    say "$MUNGE_KEY is owned by $owner, not munge:munge (munged refuses such a key): giving it back to munge"
chown munge:munge "$MUNGE_KEY"
chmod 0600 "$MUNGE_KEY"

if munge_works; then
    say "munged already running"
else
    if daemon_running "$MUNGE_PIDFILE" "$MUNGED_EXE"; then
        say "munged is running but not answering: restarting it"
        stop_daemon munged "$MUNGE_PIDFILE" "$MUNGED_EXE" 10 || true
    fi
    say "starting munged"
    if ! runuser -u munge -- /usr/sbin/munged 9>&- >&2; then
        # e.g. a socket left behind by a munged killed with SIGKILL: --force takes it over.
        say "munged refused to start; retrying with --force"
        runuser -u munge -- /usr/sbin/munged --force 9>&- >&2 || fail "munged failed to start"
    fi
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        munge_works && break
        sleep 0.1
    done
    munge_works || fail "munged started but 'munge -n | unmunge' does not work within ${TIMEOUT}s"
fi

# ---------------------------------------------------------------------------------------------
# 3. Leftovers of another local cluster
# ---------------------------------------------------------------------------------------------
HOST=$(hostname -s)
[ -n "$HOST" ] || fail "hostname -s is empty"
# Short timeout: against a dead controller scontrol keeps retrying for ~10 s; the loops retry.
ctld_up() { timeout 3 scontrol ping 2>/dev/null | grep -q 'is UP'; }
ctld_cluster() { timeout 10 scontrol show config 2>/dev/null | sed -n 's/^ClusterName *= *//p'; }

# A running slurmctld is taken for ours (and restarted when the config changes) unless it says
# it serves another cluster: check_foreign_ctld CONF asks it, through CONF (where it listens).
check_foreign_ctld() {
    local other pid
    daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" || return 0
    SLURM_CONF=$1 ctld_up || return 0
    other=$(SLURM_CONF=$1 ctld_cluster || true)
    [ -n "$other" ] && [ "$other" != loky ] || return 0
    pid=$(daemon_pids "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" | awk "NR == 1")
    leftover "ERROR: a slurmctld of another cluster, '$other', is running (pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))." \
        "It is not this script's, so it is left alone. Stop it the way it was started (or: kill $pid), then run this again."
}

# slurmctld refuses a StateSaveLocation written for another ClusterName ("CLUSTER NAME MISMATCH").
if [ -s "$SLURM_STATE_DIR/clustername" ]; then
    other=$(tr -d '[:space:]' <"$SLURM_STATE_DIR/clustername")
    if [ "$other" != loky ]; then
        aside="$SLURM_STATE_DIR.$other.$(date +%Y%m%d-%H%M%S)"
        if [ "$MOVE_LEFTOVERS" = 1 ]; then
            stop_daemon slurmctld "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" 15 || true
            say "$SLURM_STATE_DIR holds the state of another cluster, '$other': moving it to $aside (--move-leftovers)"
            mv "$SLURM_STATE_DIR" "$aside"
        else
            leftover "ERROR: $SLURM_STATE_DIR holds the state of another cluster: its clustername file says '$other', this cluster is 'loky'." \
                "slurmctld would refuse to start (CLUSTER NAME MISMATCH). If that cluster is gone, move its state aside and run this again:" \
                "    mv $SLURM_STATE_DIR $aside" \
                "or run scripts/slurm-up.sh --move-leftovers, which does just that (nothing is deleted)."
        fi
    fi
fi

if [ -n "$MULTI" ]; then
    problems=()
    for n in "${NODE_NAMES[@]}"; do
        [ "$n" = "$HOST" ] && problems+=("this machine's host name is $n, which is also the name of a node: rename the machine or use fewer nodes")
        if netns_exists "$n" && ! netns_ours "$n"; then
            problems+=("a network namespace named $n exists that this script did not make (no eth0 with alias $LOKY_MARK); if it is a leftover, delete it with: ip netns delete $n")
        fi
    done
    # /etc/hosts lines outside this script's block that name a node would win over the block.
    while IFS= read -r line; do
        problems+=("/etc/hosts names a node outside the block this script manages: '$line'; remove that line (the block is added and removed by the scripts)")
    done < <(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" -v names="${NODE_NAMES[*]}" '
        BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
        $0 == b { skip = 1; next }
        skip { if ($0 == e) skip = 0; next }
        { line = $0; sub(/#.*/, ""); for (i = 2; i <= NF; i++) if ($i in want) { print line; break } }' /etc/hosts)
    if ip link show dev "$LOKY_BRIDGE" >/dev/null 2>&1 &&
        ! ip -o link show dev "$LOKY_BRIDGE" | grep -q "alias $LOKY_MARK"; then
        problems+=("an interface named $LOKY_BRIDGE exists that this script did not make; if it is a leftover: ip link del $LOKY_BRIDGE")
    fi
    while IFS= read -r line; do
        problems+=("another interface has an address in $LOKY_NET.0/24 ($line): choose another range with SLURM_UP_NET=10.x.y")
    done < <(ip -o -4 addr show | awk -v br="$LOKY_BRIDGE" -v net="$LOKY_NET." '
        { split($4, a, "/") } index(a[1], net) == 1 && $2 != br { print $2 " " $4 }')
    [ ${#problems[@]} -eq 0 ] || leftover "${problems[@]/#/ERROR: }"
fi

# ---------------------------------------------------------------------------------------------
# 4. slurm.conf (generated, compared with the installed one)
# ---------------------------------------------------------------------------------------------
CPUS=$(nproc)
MEM_TOTAL=$(free -m | awk '/^Mem:/ { print $2 }')
# A bit under the total: slurmd drains a node whose memory is below its RealMemory.
REAL_MEM=$((MEM_TOTAL * 95 / 100))
[ "$REAL_MEM" -ge 1 ] || REAL_MEM=1

new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
# The settings both kinds of cluster share.
common_conf() {
    cat <<EOF
ClusterName=loky
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
# Debian has no /bin/mail; without this slurmctld logs "Configured MailProg is invalid".
MailProg=/bin/true
EOF
}
if [ -z "$MULTI" ]; then
    # Use the socket/core/thread layout slurmd itself detects when it agrees with nproc, so that
    # slurmctld's view and slurmd's registration match; otherwise just give the CPU count.
    TOPOLOGY=
    if hw=$(timeout 20 slurmd -C 2>/dev/null | head -n 1) &&
        [ "$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")" = "$CPUS" ]; then
        TOPOLOGY=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)
    fi
    {
        cat <<EOF
# Single-node test cluster for loky-run: generated by scripts/slurm-up.sh.
# Rewritten (and the daemons restarted) whenever the generated text changes.
EOF
        common_conf
        cat <<EOF
SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
StateSaveLocation=$SLURM_STATE_DIR
SlurmdSpoolDir=$SLURMD_SPOOL_DIR
SlurmctldLogFile=$SLURMCTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST CPUs=$CPUS ${TOPOLOGY:+$TOPOLOGY }RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    } >"$new_conf"
    SLURM_NODES=("$HOST")
    NODE_CPUS=$CPUS NODE_MEM=$REAL_MEM
else
    NODE_CPUS=$CPUS_PER_NODE
    # The nodes share the machine's memory (not scheduled: CR_CPU); each declares its part.
    NODE_MEM=$((REAL_MEM / NODES))
    [ "$NODE_MEM" -ge 1 ] || NODE_MEM=1
    {
        cat <<EOF
$MULTI_CONF_HEADER $NODES.
# Node K is a slurmd in the network namespace nodeK (address $LOKY_NET.(10+K), host name nodeK
# in its own UTS namespace), on the bridge $LOKY_BRIDGE ($LOKY_BRIDGE_ADDR, this machine): see
# scripts/slurm-lib.sh. Rewritten (and the daemons restarted) whenever the generated text changes.
EOF
        common_conf
        cat <<EOF
# The nodes declare more CPUs together than the machine has: slurmd takes this file's word.
SlurmdParameters=config_overrides
# A node whose slurmd stops answering is marked DOWN after this long (Slurm's default is 300 s).
SlurmdTimeout=$SLURMD_TIMEOUT
SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$(node_pidfile %n)
StateSaveLocation=$SLURM_STATE_DIR
SlurmdSpoolDir=$(node_spool %n)
SlurmctldLogFile=$SLURMCTLD_LOG
SlurmdLogFile=$(node_log %n)
SlurmctldDebug=info
SlurmdDebug=info
EOF
        for n in "${NODE_NAMES[@]}"; do
            echo "NodeName=$n NodeAddr=$(node_addr "$n") NodeHostname=$n CPUs=$NODE_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1 RealMemory=$NODE_MEM State=UNKNOWN"
        done
        echo "PartitionName=$PARTITION Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
    } >"$new_conf"
    SLURM_NODES=("${NODE_NAMES[@]}")
fi

check_foreign_ctld "$new_conf"
config_changed=
cmp -s "$new_conf" "$SLURM_CONF" || config_changed=1
node_set() { sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$1" 2>/dev/null | paste -sd ' ' -; }
nodes_changed=
[ -n "$config_changed" ] && [ -e "$SLURM_CONF" ] && [ "$(node_set "$SLURM_CONF")" != "$(node_set "$new_conf")" ] &&
    nodes_changed=1

# ---------------------------------------------------------------------------------------------
# 5. Stop what the new config replaces
# ---------------------------------------------------------------------------------------------
# every slurmd: the single node's (root namespace) and each node namespace's
all_slurmd_running() {
    local n
    slurmd_running && return 0
    for n in $(our_netns); do slurmd_running "$n" && return 0; done
    return 1
}
stop_all_slurmd() {
    local n
    stop_daemon slurmd "$SLURMD_PIDFILE" "$SLURMD_EXE" 15 || true
    for n in $(our_netns); do
        mapfile -t pids < <(slurmd_pids "$n")
        stop_pids "slurmd of $n" 15 "${pids[@]}" || true
        rm -f "$(node_pidfile "$n")"
    done
}
if [ -n "$config_changed" ] &&
    { daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" || all_slurmd_running; }; then
    if [ -n "$nodes_changed" ]; then
        say "the nodes change ($(node_set "$SLURM_CONF") -> $(node_set "$new_conf")): cancelling all jobs, restarting slurmctld and slurmd"
        if ctld_up; then
            mapfile -t jobs < <(timeout 10 squeue -h -o %A 2>/dev/null || true)
            if [ ${#jobs[@]} -gt 0 ]; then
                say "cancelling jobs ${jobs[*]}"
                timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
                for ((i = 0; i < 100; i++)); do
                    [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null || true)" ] && break
                    sleep 0.1
                done
            fi
        fi
    else
        say "config changed: restarting slurmctld and slurmd"
    fi
    stop_all_slurmd
    stop_daemon slurmctld "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" 15 || true
    if [ -n "$nodes_changed" ]; then
        # The jobs are gone: steps that outlived their slurmd would only hold the old nodes.
        mapfile -t steps < <(pids_of_exe "$SLURMSTEPD_EXE")
        stop_pids slurmstepd 10 "${steps[@]}" || true
    fi
fi

# ---------------------------------------------------------------------------------------------
# 6. Network namespaces, bridge and names (multi-node); removed in single-node mode
# ---------------------------------------------------------------------------------------------
# link_up DEV [NETNS]: the link is administratively up.
link_up() { ip ${2:+-n "$2"} -o link show dev "$1" 2>/dev/null | grep -q '<[^>]*\bUP\b'; }
# write_if_changed FILE: stdin becomes FILE's content, in place (bind mounts of FILE stay valid).
write_if_changed() {
    local f=$1 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if ! cmp -s "$tmp" "$f"; then
        if [ -e "$f" ]; then say "updating $f"; else say "writing $f"; fi
        cat "$tmp" >"$f"
    fi
    rm -f "$tmp"
}
# The host names of this machine (short, as given, fully qualified), as one line.
host_names() {
    { hostname -s; hostname; hostname -f 2>/dev/null || true; } | awk 'NF && !seen[$1]++ { printf "%s%s", sep, $1; sep = " " } END { print "" }'
}
# /etc/hosts in the node namespaces: the machine's, without its own names (which there are the
# bridge address) and without the block, then the machine and every node.
netns_hosts() {
    local names
    names=$(host_names)
    echo "# /etc/hosts in the node namespaces of the loky-run test cluster: generated by scripts/slurm-up.sh"
    echo "# (bind-mounted over /etc/hosts for slurmd and its job steps, and by ip netns exec; slurm-down.sh removes it)."
    awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" -v names="$names" '
        BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) drop[tolower(a[i])] = 1 }
        $0 == b { skip = 1; next }
        skip { if ($0 == e) skip = 0; next }
        /^[ \t]*(#|$)/ { print; next }
        { sub(/[ \t]*#.*/, ""); line = $1; kept = 0
          for (i = 2; i <= NF; i++) if (!(tolower($i) in drop)) { line = line " " $i; kept++ }
          if (kept) print line }' /etc/hosts
    echo "# this machine (slurmctld, and runners started in the root namespace), through the bridge"
    echo "$LOKY_BRIDGE_ADDR $names"
    for n in "${NODE_NAMES[@]}"; do echo "$(node_addr "$n") $n"; done
}

if [ -z "$MULTI" ]; then
    if [ -n "$(our_netns)" ] || ip link show dev "$LOKY_BRIDGE" >/dev/null 2>&1 ||
        grep -qxF "$HOSTS_BEGIN" /etc/hosts || [ -e "$LOKY_RUN_DIR" ]; then
        say "removing the multi-node cluster's namespaces, bridge and names"
        stop_all_slurmd
        remove_network || fail "could not remove the multi-node cluster's network"
    fi
else
    install -d "$LOKY_RUN_DIR/netns"
    printf 'NODES=%s\nNET=%s\n' "$NODES" "$LOKY_NET" | write_if_changed "$LOKY_RUN_DIR/cluster" 2>/dev/null
    if ! ip link show dev "$LOKY_BRIDGE" >/dev/null 2>&1; then
        say "creating bridge $LOKY_BRIDGE ($LOKY_BRIDGE_ADDR/24)"
        ip link add "$LOKY_BRIDGE" type bridge
        ip link set dev "$LOKY_BRIDGE" alias "$LOKY_MARK"
    fi
    ip -o -4 addr show dev "$LOKY_BRIDGE" | grep -q " inet $LOKY_BRIDGE_ADDR/24 " ||
        ip addr add "$LOKY_BRIDGE_ADDR/24" dev "$LOKY_BRIDGE"
    link_up "$LOKY_BRIDGE" || ip link set dev "$LOKY_BRIDGE" up
    # Should the bridge disappear while slurmctld runs, its traffic to the nodes fails here
    # instead of following the default route off this machine.
    [ -n "$(ip route show table main type unreachable "$LOKY_NET.0/24" metric "$LOKY_GUARD_METRIC" 2>/dev/null)" ] ||
        ip route add unreachable "$LOKY_NET.0/24" metric "$LOKY_GUARD_METRIC"
    for n in "${NODE_NAMES[@]}"; do
        v=$(node_veth "$n") a=$(node_addr "$n")
        if ! netns_exists "$n"; then
            say "creating network namespace $n ($a)"
            : >"$LOKY_RUN_DIR/netns/$n"
            ip netns add "$n"
        fi
        [ -e "$LOKY_RUN_DIR/netns/$n" ] || : >"$LOKY_RUN_DIR/netns/$n"
        link_up lo "$n" || ip -n "$n" link set dev lo up
        if ! ip -n "$n" link show dev eth0 >/dev/null 2>&1; then
            say "connecting $n to $LOKY_BRIDGE (veth $v)"
            ip link del "$v" 2>/dev/null || true
            ip link add "$v" type veth peer name eth0 netns "$n"
            ip link set dev "$v" alias "$LOKY_MARK $n"
            ip -n "$n" link set dev eth0 alias "$LOKY_MARK"
        fi
        [ "$(basename "$(readlink "/sys/class/net/$v/master" 2>/dev/null)")" = "$LOKY_BRIDGE" ] ||
            ip link set dev "$v" master "$LOKY_BRIDGE"
        link_up "$v" || { say "setting $v up"; ip link set dev "$v" up; }
        ip -n "$n" -o -4 addr show dev eth0 | grep -q " inet $a/24 " || ip -n "$n" addr add "$a/24" dev eth0
        link_up eth0 "$n" || { say "setting eth0 of $n up"; ip -n "$n" link set dev eth0 up; }
        install -d "/etc/netns/$n"
        netns_hosts | write_if_changed "/etc/netns/$n/hosts"
        install -d -m 0755 "$(node_spool "$n")"
    done
    # Nodes of an earlier, larger cluster.
    for n in $(our_netns); do
        [[ " ${NODE_NAMES[*]} " == *" $n "* ]] && continue
        say "removing $n (not a node of this cluster)"
        remove_node_netns "$n"
    done
    # The root namespace's names: the block, appended (or replaced) in place.
    block=$(printf '%s\n' "$HOSTS_BEGIN"; for n in "${NODE_NAMES[@]}"; do echo "$(node_addr "$n") $n"; done; printf '%s\n' "$HOSTS_END")
    if [ "$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b { p = 1 } p { print } $0 == e { p = 0 }' /etc/hosts)" != "$block" ]; then
        if grep -qxF "$HOSTS_BEGIN" /etc/hosts; then say "updating the node names in /etc/hosts"; else say "adding the node names to /etc/hosts (a marked block)"; fi
        remove_hosts_block /etc/hosts
        printf '%s\n' "$block" >>/etc/hosts
    fi
fi

# ---------------------------------------------------------------------------------------------
# 7. Install slurm.conf
# ---------------------------------------------------------------------------------------------
install -d -m 0755 /etc/slurm "$SLURM_LOG_DIR"
install -d -m 0700 "$SLURM_STATE_DIR"
[ -n "$MULTI" ] || install -d -m 0755 "$SLURMD_SPOOL_DIR"
if [ -n "$config_changed" ]; then
    if [ -e "$SLURM_CONF" ]; then
        say "$SLURM_CONF differs from the generated one: rewriting it"
        cp -p "$SLURM_CONF" "$SLURM_CONF.bak"
    else
        say "writing $SLURM_CONF"
    fi
    install -m 0644 "$new_conf" "$SLURM_CONF"
fi
rm -f "$new_conf"
trap - EXIT

# ---------------------------------------------------------------------------------------------
# 8. slurmctld and slurmd
# ---------------------------------------------------------------------------------------------
if daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE"; then
    say "slurmctld already running"
else
    say "starting slurmctld"
    # Daemonizes; logs go to $SLURMCTLD_LOG.
    /usr/sbin/slurmctld 9>&- >&2 || fail "slurmctld failed to start (exit status $?)"
fi
deadline=$((SECONDS + TIMEOUT))
while :; do
    # Check the process first: 'scontrol ping' keeps retrying a refused connection for ~10 s.
    daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" || { sleep 0.5; daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" || fail "slurmctld exited"; }
    ctld_up && break
    ((SECONDS < deadline)) || fail "slurmctld does not answer 'scontrol ping' within ${TIMEOUT}s"
    sleep 0.5
done

# The slurmd of a Slurm node: "" is the single node's (root namespace), else nodeK.
slurmd_key() { if [ -n "$MULTI" ]; then printf '%s\n' "$1"; fi; }
on_node() { if [ -n "$MULTI" ]; then printf ' on %s' "$1"; fi; }
declare -A slurmd_started_at=()
for node in "${SLURM_NODES[@]}"; do
    key=$(slurmd_key "$node")
    if slurmd_running "$key"; then
        say "slurmd$(on_node "$node") already running"
        continue
    fi
    say "starting slurmd$(on_node "$node")"
    # slurmctld keeps showing a node idle for SlurmdTimeout after its slurmd died, so "idle"
    # alone proves nothing: wait for this slurmd to answer and to have registered.
    slurmd_started_at[$node]=$(date -d '1 second ago' +%Y-%m-%dT%H:%M:%S)
    if [ -z "$MULTI" ]; then
        /usr/sbin/slurmd 9>&- >&2 || fail "slurmd failed to start (exit status $?)"
    else
        # In the node's network namespace, with its own UTS namespace (host name nodeK) and
        # /etc/netns/nodeK/hosts as /etc/hosts: job steps, its children, inherit both.
        node_spawn "$node" /usr/sbin/slurmd -N "$node" 9>&- >&2 ||
            fail "slurmd on $node failed to start (exit status $?)"
    fi
done

# ---------------------------------------------------------------------------------------------
# 9. Wait for the nodes
# ---------------------------------------------------------------------------------------------
node_state() { timeout 10 sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n 1; }
# 'scontrol show slurmd' asks the slurmd of the node it runs on: run it there.
slurmd_answers() {
    if [ -z "$MULTI" ]; then
        timeout 10 scontrol show slurmd >/dev/null 2>&1
    else
        in_node "$1" timeout 10 scontrol show slurmd >/dev/null 2>&1
    fi
}
slurmd_registered() {
    local since=${slurmd_started_at[$1]:-} t
    [ -z "$since" ] && return 0
    t=$(timeout 10 scontrol show node "$1" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p' || true)
    [ -n "$t" ] && [[ ! "$t" < "$since" ]]
}
declare -A state=() last_resume=()
deadline=$((SECONDS + TIMEOUT))
while :; do
    all_ready=1
    for node in "${SLURM_NODES[@]}"; do
        key=$(slurmd_key "$node")
        slurmd_running "$key" || { sleep 0.5; slurmd_running "$key" || fail "slurmd$(on_node "$node") exited"; }
        state[$node]=$(node_state "$node" || true)
        case "${state[$node]}" in
        idle | mixed | allocated | completing) # up (jobs may be running)
            slurmd_answers "$node" && slurmd_registered "$node" && continue ;;
        down | drain* | fail* | down\*)
            # Responding (no trailing '*') but marked down or drained, e.g. by a previous run.
            # With --nodes also down*: a node whose link was cut (or whose slurmd was killed) is
            # pinged again by slurmctld only minutes after it is back; its slurmd runs here.
            [ "${state[$node]}" = "down*" ] && [ -z "$MULTI" ] && { all_ready=; continue; }
            if ((SECONDS - ${last_resume[$node]:-0} >= 5)); then
                say "node $node is ${state[$node]} ($(timeout 10 sinfo -h -N -n "$node" -o %E 2>/dev/null || true)): resuming it"
                timeout 10 scontrol update nodename="$node" state=resume >&2 || true
                last_resume[$node]=$SECONDS
            fi
            ;;
        esac
        all_ready=
    done
    [ -n "$all_ready" ] && break
    ((SECONDS < deadline)) || break
    sleep 0.5
done
for node in "${SLURM_NODES[@]}"; do
    slurmd_answers "$node" || fail "slurmd$(on_node "$node") does not answer 'scontrol show slurmd' after ${TIMEOUT}s"
    slurmd_registered "$node" || fail "slurmd$(on_node "$node") has not registered with slurmctld after ${TIMEOUT}s"
    case "${state[$node]}" in
    idle | mixed | allocated | completing) ;;
    *) fail "node $node is '${state[$node]:-unknown}' instead of idle after ${TIMEOUT}s" ;;
    esac
done

if [ -n "$MULTI" ]; then
    # What the runner relies on: each node has its own host name, and there this machine's
    # name is the bridge address (and the nodes' names resolve in the root namespace too).
    names=$(host_names)
    for node in "${NODE_NAMES[@]}"; do
        # Replacing the real /etc/hosts (sed -i, an editor writing a new file) silently drops the
        # bind mount over it in the node's mount namespace: the node then sees the real one
        # (this machine's name as 127.0.0.1). Mount it again there, for slurmd and its steps.
        pid=$(slurmd_pids "$node" | awk "NR == 1")
        if [ -n "$pid" ] && [ "$(nsenter -t "$pid" -m -- stat -L -c %d:%i /etc/hosts 2>/dev/null || true)" != "$(stat -L -c %d:%i "/etc/netns/$node/hosts")" ]; then
            say "on $node, /etc/hosts is no longer /etc/netns/$node/hosts (was the real /etc/hosts replaced, e.g. by sed -i?): mounting it again"
            nsenter -t "$pid" -m -- mount --bind "/etc/netns/$node/hosts" /etc/hosts ||
                fail "cannot bind-mount /etc/netns/$node/hosts over /etc/hosts in the mount namespace of $node's slurmd (pid $pid)"
        fi
        # shellcheck disable=SC2016  # (expanded by that sh)
        seen=$(in_node "$node" timeout 10 sh -c 'printf "%s %s\n" "$(hostname)" "$(getent hosts "$1" | awk "{ print \$1; exit }")"' sh "${names%% *}" 2>&1 || true)
        [ "$seen" = "$node $LOKY_BRIDGE_ADDR" ] ||
            fail "on $node, 'hostname' and 'getent hosts ${names%% *}' say '$seen', not '$node $LOKY_BRIDGE_ADDR'"
        seen=$(timeout 10 getent hosts "$node" | awk '{ print $1; exit }' || true)
        [ "$seen" = "$(node_addr "$node")" ] ||
            fail "in the root namespace, 'getent hosts $node' says '$seen', not '$(node_addr "$node")'"
    done
fi

# ---------------------------------------------------------------------------------------------
# 10. Report
# ---------------------------------------------------------------------------------------------
timeout 10 sinfo || true
if [ -z "$MULTI" ]; then
    echo "slurm-up: OK: Slurm cluster 'loky' is up: node $HOST ($CPUS CPUs, ${REAL_MEM} MB) is ${state[$HOST]} in partition $PARTITION"
else
    states=
    for node in "${NODE_NAMES[@]}"; do states+="${states:+, }$node ${state[$node]}"; done
    echo "slurm-up: OK: Slurm cluster 'loky' is up: $NODES nodes node[1-$NODES] ($NODE_CPUS CPUs, ${NODE_MEM} MB each) in partition $PARTITION: $states"
    echo "slurm-up: node K is network namespace nodeK at $LOKY_NET.(10+K) (scripts/slurm-node.sh exec nodeK CMD runs CMD there); this machine ($(host_names)) is $LOKY_BRIDGE_ADDR there"
fi
