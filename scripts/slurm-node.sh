#!/usr/bin/env bash
# scripts/slurm-node.sh — act on one node of the multi-node test cluster (scripts/slurm-up.sh
# --nodes N), e.g. to make it fail in a test.
#
# Usage: scripts/slurm-node.sh status | exec NODE CMD... | pids NODE | kill NODE | cut NODE | heal NODE
#   status         each node: slurmd pid, link, processes in its namespace, Slurm's state
#   exec NODE CMD  runs CMD as on NODE: its network, host name and /etc/hosts (like a job step)
#   pids NODE      the processes on NODE (slurmd, slurmstepd, job step tasks), one per line
#   kill NODE      SIGKILL to every process on NODE: slurmd, its steps and their tasks. Their
#                  TCP connections end at once (the kernel closes them); srun reports the tasks
#                  as killed; slurmctld marks the node DOWN after SlurmdTimeout (30 s here).
#   cut NODE       sets the node's link down (veth lk-NODE): everything keeps running but
#                  nothing gets through, as when a node loses its network or power; peers find
#                  out by their own timeouts (TCP keepalive, SlurmdTimeout).
#   heal NODE      sets the link up again, and resumes the node if Slurm marked it DOWN
#                  (slurmctld would otherwise notice it is back only minutes later).
# After kill, `scripts/slurm-up.sh --nodes N` starts the node's slurmd again (and resumes it).
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
-h | --help) usage ;;
*) say "ERROR: unknown command '$cmd'"; usage >&2; exit 2 ;;
esac
