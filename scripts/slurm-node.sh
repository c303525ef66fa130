#!/usr/bin/env bash
# scripts/slurm-node.sh — act on one node of the multi-node test cluster (scripts/slurm-up.sh
# --nodes N), e.g. to make it fail in a test.
#
# Usage: scripts/slurm-node.sh status | exec NODE CMD... | pids NODE | kill NODE | cut NODE | heal NODE | down NODE | restore NODE
#   status         each node: slurmd pid, link, processes in its namespace, Slurm's state
#   exec NODE CMD  runs CMD as on NODE: its network, host name and /etc/hosts (like a job step)
#   pids NODE      the processes on NODE (slurmd, slurmstepd, job step tasks), one per line
#   kill NODE      SIGKILL to every process on NODE: slurmd, its steps and their tasks. Their
#                  TCP connections end at once (the kernel closes them), but Slurm only finds
#                  out when the node misses its pings: about 40 s with SlurmdTimeout=30, then
#                  each srun with a step there prints "srun: error: Node failure on NODE" and
#                  exits 0, and a job without --no-kill is revoked (all its steps killed).
#   cut NODE       sets the node's link down (veth lk-NODE): everything keeps running but
#                  nothing gets through, as when a node loses its network or power; peers find
#                  out by their own timeouts (TCP keepalive; Slurm as for kill).
#   heal NODE      sets the link up again, and resumes the node if Slurm marked it DOWN
#                  (slurmctld would otherwise notice it is back only minutes later).
#   down NODE      tells slurmctld now that NODE is DOWN (instead of its ~40 s): the sruns of
#                  steps there end at once ("Node failure"), its jobs leave the node.
#   restore NODE   after any of the above: marks it DOWN if it is not healthy (so no job stays
#                  "completing" on it), sets its link up and runs slurm-up.sh --nodes N, which
#                  starts its slurmd again and resumes it.
# Run as root.
set -euo pipefail
export LC_ALL=C
_msg_prefix=slurm-node
# shellcheck source=slurm-lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/slurm-lib.sh"

usage() { sed -n 's/^# Usage: //p' "${BASH_SOURCE[0]}"; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { say "ERROR: must run as root"; exit 1; }
cmd=$1
shift

need_node() {
    [ $# -ge 1 ] || { say "ERROR: $cmd needs a node name (node1, node2, ...)"; exit 2; }
    if ! { netns_exists "$1" && netns_ours "$1"; }; then
        say "ERROR: $1 is not a node of the multi-node test cluster (nodes: $(our_netns | paste -sd ' ' -))"
        exit 1
    fi
}

case $cmd in
status)
    for n in $(our_netns); do
        link=down
        ip -o link show dev "$(node_veth "$n")" 2>/dev/null | grep -q '<[^>]*\bUP\b' && link=up
        printf '%s: address %s, slurmd pid %s, link %s, %s processes, Slurm state %s\n' "$n" "$(node_addr "$n")" \
            "$(slurmd_pids "$n" | paste -sd ' ' - | sed 's/^$/none/')" "$link" "$(pids_in_netns "$n" | wc -l)" \
            "$(timeout 10 sinfo -h -N -n "$n" -o %T 2>/dev/null || echo '?')"
    done
    ;;
exec)
    need_node "$@"
    node=$1
    shift
    [ $# -ge 1 ] || { say "ERROR: exec $node needs a command"; exit 2; }
    in_node "$node" "$@"
    ;;
pids)
    need_node "$@"
    pids_in_netns "$1"
    ;;
kill)
    need_node "$@"
    # Repeat until none is left: slurmd or a stepd may be forking as it dies.
    for ((i = 0; i < 50; i++)); do
        mapfile -t pids < <(pids_in_netns "$1")
        [ ${#pids[@]} -gt 0 ] || break
        [ "$i" -gt 0 ] || say "killing every process on $1 (pid ${pids[*]})"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.1
    done
    rm -f "$(node_pidfile "$1")"
    [ -z "$(pids_in_netns "$1")" ] || { say "ERROR: processes left on $1: $(pids_in_netns "$1" | paste -sd ' ' -)"; exit 1; }
    ;;
cut)
    need_node "$@"
    say "cutting $1's link ($(node_veth "$1") down)"
    ip link set dev "$(node_veth "$1")" down
    ;;
heal)
    need_node "$@"
    say "restoring $1's link ($(node_veth "$1") up)"
    ip link set dev "$(node_veth "$1")" up
    # slurmctld pings a DOWN node only every few minutes: tell it now that the node is back.
    state=$(timeout 10 sinfo -h -N -n "$1" -o %T 2>/dev/null || true)
    case $state in
    down*)
        say "$1 is $state in Slurm: resuming it"
        timeout 10 scontrol update nodename="$1" state=resume || true
        ;;
    esac
    ;;
down)
    need_node "$@"
    say "marking $1 DOWN in Slurm"
    timeout 10 scontrol update nodename="$1" state=down reason="slurm-node.sh down"
    ;;
restore)
    need_node "$@"
    nodes=$(sed -n 's/^NODES=//p' "$LOKY_RUN_DIR/cluster" 2>/dev/null || true)
    [ -n "$nodes" ] || { say "ERROR: $LOKY_RUN_DIR/cluster does not say how many nodes the cluster has"; exit 1; }
    state=$(timeout 10 sinfo -h -N -n "$1" -o %T 2>/dev/null || true)
    healthy=
    if [ -n "$(slurmd_pids "$1")" ] && ip -o link show dev "$(node_veth "$1")" 2>/dev/null | grep -q '<[^>]*\bUP\b'; then
        case $state in idle | mixed | allocated) healthy=1 ;; esac
    fi
    if [ -z "$healthy" ]; then
        case $state in
        down* | drain* | fail*) ;;
        *)
            say "$1 is ${state:-unknown} in Slurm: marking it DOWN first (its jobs leave it)"
            timeout 10 scontrol update nodename="$1" state=down reason="slurm-node.sh restore" || true
            ;;
        esac
    fi
    ip link set dev "$(node_veth "$1")" up
    exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/slurm-up.sh" --nodes "$nodes"
    ;;
-h | --help) usage ;;
*) say "ERROR: unknown command '$cmd'"; usage >&2; exit 2 ;;
esac
