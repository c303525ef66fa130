#!/usr/bin/env bash
# scripts/slurm-up.sh — bring up a single-node Slurm cluster for the tests (and by hand).
#
# Run as root on Debian 12 (Slurm 22.05, munge 0.5.15) without systemd. It
#   1. installs slurmctld slurmd slurm-client munge (only if missing),
#   2. creates the munge key if missing and starts munged (as user munge) if not working,
#   3. writes /etc/slurm/slurm.conf for one node named `hostname -s` with its CPU count and
#      memory (rewritten only when the generated text differs),
#   4. starts slurmctld and slurmd as root (restarting both if the config changed),
#   5. waits (bounded) until the node is idle, resuming it if it is down or drained,
#   6. prints `sinfo` and a one-line success message.
# Idempotent: a second run with the daemons up and the config unchanged changes nothing.
# On failure it exits non-zero with a message and the tail of the daemon logs.
#
# Environment:
#   SLURM_UP_TIMEOUT   seconds to wait for each daemon / the node to become ready (default 60)
#   SLURM_UP_PARTITION partition name (default "debug")
# Stop everything again with scripts/slurm-down.sh.
set -euo pipefail
export LC_ALL=C
_msg_prefix=slurm-up
# shellcheck source=slurm-lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/slurm-lib.sh"

TIMEOUT=${SLURM_UP_TIMEOUT:-60}
PARTITION=${SLURM_UP_PARTITION:-debug}
PACKAGES=(slurmctld slurmd slurm-client munge)

fail() {
    trap - ERR
    say "ERROR: $*"
    if command -v sinfo >/dev/null 2>&1 && [ -r "$SLURM_CONF" ] &&
        daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE"; then
        printf '\n----- sinfo -R -----\n' >&2
        timeout 5 sinfo -R >&2 2>&1 || true
    fi
    show_log_tails 30
    say "FAILED: the single-node Slurm cluster is not available (see above)."
    exit 1
}

[ "$(id -u)" -eq 0 ] || { say "ERROR: must run as root"; exit 1; }
set -E
trap 'fail "command failed (line $LINENO, exit status $?): $BASH_COMMAND"' ERR

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

# ---------------------------------------------------------------------------------------------
# 2. munge
# ---------------------------------------------------------------------------------------------
# munged refuses to run if these are group/world writable or owned by someone else.
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s "$MUNGE_KEY" ]; then
    say "creating munge key $MUNGE_KEY"
    rm -f "$MUNGE_KEY"
    if ! runuser -u munge -- mungekey --create --keyfile="$MUNGE_KEY" >&2; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none) ||
            fail "cannot create $MUNGE_KEY"
    fi
fi
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
# 3. slurm.conf
# ---------------------------------------------------------------------------------------------
HOST=$(hostname -s)
[ -n "$HOST" ] || fail "hostname -s is empty"
CPUS=$(nproc)
MEM_TOTAL=$(free -m | awk '/^Mem:/ { print $2 }')
# A bit under the total: slurmd drains a node whose memory is below its RealMemory.
REAL_MEM=$((MEM_TOTAL * 95 / 100))
[ "$REAL_MEM" -ge 1 ] || REAL_MEM=1
# Use the socket/core/thread layout slurmd itself detects when it agrees with nproc, so that
# slurmctld's view and slurmd's registration match; otherwise just give the CPU count.
TOPOLOGY=
if hw=$(timeout 20 slurmd -C 2>/dev/null | head -n 1) &&
    [ "$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")" = "$CPUS" ]; then
    TOPOLOGY=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)
fi

new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Single-node test cluster for loky-run: generated by scripts/slurm-up.sh.
# Rewritten (and the daemons restarted) whenever the generated text changes.
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

install -d -m 0755 /etc/slurm "$SLURM_LOG_DIR"
install -d -m 0700 "$SLURM_STATE_DIR"
install -d -m 0755 "$SLURMD_SPOOL_DIR"
config_changed=
if ! cmp -s "$new_conf" "$SLURM_CONF"; then
    if [ -e "$SLURM_CONF" ]; then
        say "$SLURM_CONF differs from the generated one: rewriting it"
        cp -p "$SLURM_CONF" "$SLURM_CONF.bak"
    else
        say "writing $SLURM_CONF"
    fi
    install -m 0644 "$new_conf" "$SLURM_CONF"
    config_changed=1
fi
rm -f "$new_conf"
trap - EXIT

# ---------------------------------------------------------------------------------------------
# 4. slurmctld and slurmd
# ---------------------------------------------------------------------------------------------
if [ -n "$config_changed" ] &&
    { daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" || daemon_running "$SLURMD_PIDFILE" "$SLURMD_EXE"; }; then
    say "config changed: restarting slurmctld and slurmd"
    stop_daemon slurmd "$SLURMD_PIDFILE" "$SLURMD_EXE" 15 || true
    stop_daemon slurmctld "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" 15 || true
fi

# Short timeout: against a dead controller scontrol keeps retrying for ~10 s; the loop retries.
ctld_up() { timeout 3 scontrol ping 2>/dev/null | grep -q 'is UP'; }

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

slurmd_started_at=
if daemon_running "$SLURMD_PIDFILE" "$SLURMD_EXE"; then
    say "slurmd already running"
else
    say "starting slurmd"
    # slurmctld keeps showing a node idle for SlurmdTimeout (300 s) after its slurmd died, so
    # "idle" alone proves nothing: wait for this slurmd to answer and to have registered.
    slurmd_started_at=$(date -d '1 second ago' +%Y-%m-%dT%H:%M:%S)
    /usr/sbin/slurmd 9>&- >&2 || fail "slurmd failed to start (exit status $?)"
fi

# ---------------------------------------------------------------------------------------------
# 5. Wait for the node
# ---------------------------------------------------------------------------------------------
node_state() { timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1; }
slurmd_answers() { timeout 10 scontrol show slurmd >/dev/null 2>&1; }
slurmd_registered() {
    [ -z "$slurmd_started_at" ] && return 0
    local t
    t=$(timeout 10 scontrol show node "$HOST" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p' || true)
    [ -n "$t" ] && [[ ! "$t" < "$slurmd_started_at" ]]
}
state=
last_resume=0
deadline=$((SECONDS + TIMEOUT))
while :; do
    daemon_running "$SLURMD_PIDFILE" "$SLURMD_EXE" || { sleep 0.5; daemon_running "$SLURMD_PIDFILE" "$SLURMD_EXE" || fail "slurmd exited"; }
    state=$(node_state || true)
    ready=
    slurmd_answers && slurmd_registered && ready=1
    case "$state" in
    idle | mixed | allocated | completing) [ -n "$ready" ] && break ;; # up (jobs may be running)
    down | drain* | fail*)
        # Responding (no trailing '*') but marked down or drained, e.g. by a previous run.
        if ((SECONDS - last_resume >= 5)); then
            say "node $HOST is $state ($(timeout 10 sinfo -h -N -n "$HOST" -o %E 2>/dev/null || true)): resuming it"
            timeout 10 scontrol update nodename="$HOST" state=resume >&2 || true
            last_resume=$SECONDS
        fi
        ;;
    esac
    ((SECONDS < deadline)) || break
    sleep 0.5
done
slurmd_answers || fail "slurmd does not answer 'scontrol show slurmd' after ${TIMEOUT}s"
slurmd_registered || fail "slurmd has not registered with slurmctld after ${TIMEOUT}s"
case "$state" in
idle | mixed | allocated | completing) ;;
*) fail "node $HOST is '${state:-unknown}' instead of idle after ${TIMEOUT}s" ;;
esac

# ---------------------------------------------------------------------------------------------
# 6. Report
# ---------------------------------------------------------------------------------------------
timeout 10 sinfo || true
echo "slurm-up: OK: Slurm cluster 'loky' is up: node $HOST ($CPUS CPUs, ${REAL_MEM} MB) is $state in partition $PARTITION"
