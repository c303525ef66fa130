#!/usr/bin/env bash
# scripts/slurm-down.sh — stop the single-node test cluster started by scripts/slurm-up.sh.
#
# Cancels all jobs (so no job step keeps running), then stops slurmd, any leftover slurmstepd,
# slurmctld and munged. Processes are found through their pid files and by their exact
# executable path in /proc. Keeps the packages, the config, the munge key and the state.
# Set SLURM_DOWN_KEEP_MUNGE=1 to leave munged running.
set -uo pipefail
export LC_ALL=C
_msg_prefix=slurm-down
# shellcheck source=slurm-lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/slurm-lib.sh"

[ "$(id -u)" -eq 0 ] || { say "ERROR: must run as root"; exit 1; }
rc=0

if daemon_running "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" && command -v squeue >/dev/null 2>&1; then
    mapfile -t jobs < <(timeout 10 squeue -h -o %A 2>/dev/null)
    if [ ${#jobs[@]} -gt 0 ]; then
        say "cancelling jobs ${jobs[*]}"
        timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi

stop_daemon slurmd "$SLURMD_PIDFILE" "$SLURMD_EXE" 15 || rc=1
# Steps outlive slurmd by design; after the jobs were cancelled none should be left.
mapfile -t steps < <(pids_of_exe "$SLURMSTEPD_EXE")
stop_pids slurmstepd 10 "${steps[@]}" || rc=1
stop_daemon slurmctld "$SLURMCTLD_PIDFILE" "$SLURMCTLD_EXE" 15 || rc=1
if [ "${SLURM_DOWN_KEEP_MUNGE:-0}" != 1 ]; then
    stop_daemon munged "$MUNGE_PIDFILE" "$MUNGED_EXE" 10 || rc=1
fi

left=$( { pids_of_exe "$SLURMCTLD_EXE"; pids_of_exe "$SLURMD_EXE"; pids_of_exe "$SLURMSTEPD_EXE"
          [ "${SLURM_DOWN_KEEP_MUNGE:-0}" = 1 ] || pids_of_exe "$MUNGED_EXE"; } | tr '\n' ' ')
if [ -n "${left// /}" ]; then
    say "ERROR: still running: pid $left"
    exit 1
fi
if [ $rc -eq 0 ]; then say "OK: Slurm daemons stopped"; else say "stopped, with warnings"; fi
exit $rc
